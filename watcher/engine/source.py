"""Steps 1-3 of a deploy: fetch, verify and export, then the plan made from their result.

`SourceSteps.plan` brings the commit into the mirror (when the mirror lacks it), checks its
signature (`git.verify`) before anything of it is written out, exports it into the new
release (linked from the live one when the plan allows), and lists its commits for the
report. The whole plan (`plan.make_plan`) needs what only the export knows: the
requirements' hash and the changed paths.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import structlog

from watcher.config import Config
from watcher.engine.admission import verify_signatures
from watcher.engine.journal import Run
from watcher.engine.plan import Plan, PlanInput, make_plan, source_steps
from watcher.errors import GitError, WatcherError
from watcher.parts import venvs
from watcher.parts.gitsource import GitSource
from watcher.parts.releases import Layout
from watcher.parts.signatures import Verifier
from watcher.parts.state import ReleaseRecord

log = structlog.get_logger()


class SourceSteps:
    def __init__(self, cfg: Config, layout: Layout, git: GitSource, verifier: Verifier) -> None:
        self.cfg = cfg
        self.layout = layout
        self.git = git
        self.verifier = verifier

    def plan(self, run: Run, sha: str, live: ReleaseRecord | None,
             release: Path) -> tuple[Plan, str]:
        """The source steps (fetch, export), then the whole plan, made from their result,
        and the new release's venv hash."""
        tag = run.tag
        # The venv hash needs the build interpreter's version (a python run of ~30 ms): asked
        # meanwhile, while git works. A failure is left to venv_hash below, which asks again.
        ask = threading.Thread(target=_interpreter_id, args=(self.cfg.build.python,))
        ask.start()
        have = self.git.has(sha) and (tag is None or self.git.has_tag(tag))
        fetch, *verify, export = source_steps(have, self.cfg.git.verify,
                                              live is not None)
        with run.steps.step("fetch", fetch.reason, action=fetch.action):
            if fetch.action == "run":
                self.git.fetch(tags=tag is not None)
            if not self.git.has(sha):
                raise GitError(f"commit {sha[:12]} is not on branch {self.cfg.git.branch}")
        for step in verify:  # before anything of the commit is written out
            with run.steps.step("verify", step.reason, action=step.action):
                verify_signatures(self.verifier, sha, tag)
        with run.steps.step("export", export.reason, action=export.action):
            base = (self.layout.release(live.name), live.sha) if live is not None else None
            how = self.git.export(sha, release, base=base if export.action == "link" else None)
            log.info("export.done", how=how)
        run.commits = self.git.commits(live.sha if live else None, sha)
        ask.join()
        digest = venvs.venv_hash(release, self.cfg.build.requirements, self.cfg.build.python)
        return make_plan(PlanInput(
            live_sha=live.sha if live else None, live_venv=live.venv if live else None,
            target_sha=sha, target_venv=digest,
            venv_ready=venvs.is_complete(self.layout.venvs, digest),
            changed=self.git.changed_paths(live.sha, sha) if live else None,
            have_commit=have,
        ), self.cfg), digest


def _interpreter_id(python: str) -> None:
    with contextlib.suppress(WatcherError):  # cached when it works; asked again if not
        venvs.interpreter_id(python)

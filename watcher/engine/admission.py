"""Whether a new head may be deployed now (DESIGN §5, "what gets deployed").

Checked by `Deployer.check_once` (every automatic deploy: poll, webhook, trigger, SIGUSR1,
`--once`) after the unchanged and known-bad answers, in this order:

1. path filters: a head whose changes since the live release all fall outside `git.paths`
   or inside `git.ignore_paths` is recorded as skipped; the live release stays, and the next
   real deploy lists the skipped commits (its commit list starts at the live release);
2. holds: while paused, or outside `schedule.windows`, the head is recorded as waiting, with
   until when; the next check after the hold ends deploys it.

The signature (`git.verify`) is a step of the deploy itself (`verify_signatures`), between
fetch and export, so `watcher deploy REV` is verified too and a refusal is an ordinary failed
deploy: reported, exit 1, the commit marked bad.
"""

from __future__ import annotations

import structlog

from watcher.config import Config
from watcher.control import active_pause, schedule_of
from watcher.engine.journal import Journal, Outcome
from watcher.errors import EXIT_OK, StepFailed, TransientError
from watcher.gates import PathFilter, hold
from watcher.parts.gitsource import GitSource
from watcher.parts.signatures import Verifier
from watcher.parts.state import State
from watcher.schedule import Clock, iso

log = structlog.get_logger()


def admit(cfg: Config, git: GitSource, journal: Journal, clock: Clock, state: State,
          head: str, tag: str | None) -> Outcome | None:
    """None when `head` may be deployed now; else the skipped or waiting outcome, recorded."""
    live = state.live_record()
    paths = PathFilter(cfg.git.paths, cfg.git.ignore_paths)
    if paths.active and live is not None:
        try:
            if not git.has(head):
                git.fetch(tags=tag is not None)
        except TransientError as exc:
            journal.last_check(state, "transient", head, error=str(exc))
            raise
        reason = paths.skip_reason(git.changed_paths(live.sha, head))
        if reason:
            journal.last_check(state, "skipped", head, reason=reason, tag=tag)
            log.info("check.skipped", sha=head[:12], reason=reason)
            return Outcome("skipped", EXIT_OK, head, live.name, f"not deployed: {reason}")
    now = clock()
    held = hold(active_pause(cfg, now), schedule_of(cfg), now)
    if held is None:
        return None
    last = state.last_check
    same = last.get("result") == "waiting" and last.get("remote_sha") == head
    until = iso(held.until) if held.until else None
    journal.last_check(state, "waiting", head, hold=held.reason, until=until, tag=tag,
                       detail=held.detail,
                       waiting_since=(last.get("waiting_since") if same else None) or iso(now))
    log.info("check.waiting", sha=head[:12], hold=held.reason, until=until,
             detail=held.detail)
    return Outcome("waiting", EXIT_OK, head, state.live,
                   f"held back: {held.detail}" + (f"; until {until}" if until else ""))


def verify_signatures(verifier: Verifier, sha: str, tag: str | None) -> None:
    """The commit (and the tag, with `git.tag_pattern`) must carry a good signature by an
    allowed key; StepFailed("verify") saying which refusal it is and who signed."""
    verdicts = [verifier.commit(sha)] + ([verifier.tag(tag)] if tag else [])
    refused = [v for v in verdicts if not v.ok]
    if refused:
        raise StepFailed("verify", "; ".join(v.message for v in refused),
                         "\n".join(f"{v.subject}: {v.kind} {v.signer}".rstrip()
                                   for v in verdicts))

"""`watcher plan [REV]`: what a deploy would do, changing nothing live.

It may fetch into the mirror and build the venv into `venvs/` (the deploy reuses it); it
creates nothing under `releases/`: the commit is exported into a temp dir under
`.watcher/` (0700), Django is booted there for the gate and the pending migrations, and the
dir is removed afterwards. `current`, the running app and state.json are not touched.
Crash point: a kill leaves `.watcher/plan-*`, which the next plan removes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import structlog

from watcher.config import Config
from watcher.control import active_pause, schedule_of
from watcher.engine.deploy import Deployer
from watcher.engine.migrations import decide
from watcher.engine.plan import PlanInput, make_plan
from watcher.errors import EXIT_FAILED, EXIT_OK, StepFailed, TransientError
from watcher.gates import PathFilter, hold
from watcher.parts import lock, venvs
from watcher.parts.django_findings import Inspection
from watcher.parts.django_steps import Django
from watcher.parts.releases import link_shared
from watcher.parts.signatures import Verifier
from watcher.schedule import iso, utc_now

log = structlog.get_logger()
TMP_PREFIX = "plan-"


def preview(deployer: Deployer, rev: str | None) -> dict[str, Any]:
    cfg, layout, git = deployer.cfg, deployer.layout, deployer.git
    layout.prepare()
    with lock.acquire(deployer.lock_path, wait=0.0):
        for stale in layout.state_dir.glob(TMP_PREFIX + "*"):
            shutil.rmtree(stale, ignore_errors=True)
        state = deployer.state_file.load()
        live = state.live_record()
        if rev:
            sha, tag = git.resolve(rev), (rev if git.has_tag(rev) else None)
        else:
            sha, tag = git.remote_target()
        out: dict[str, Any] = {
            "app": cfg.app.name, "rev": rev or None,
            "target": {"sha": sha, "tag": tag},
            "live": {"release": live.name, "sha": live.sha} if live else None,
            "refusals": [], "notes": [],
        }
        if live is not None and live.sha == sha:
            return _done(out, "up_to_date", "already live: nothing to do")
        if not git.has(sha) or (tag and not git.has_tag(tag)):
            git.fetch(tags=bool(tag))
        out["commits"] = [c.__dict__ for c in git.commits(live.sha if live else None, sha)]
        changed = git.changed_paths(live.sha, sha) if live else None
        out["changed_paths"] = sorted(changed) if changed is not None else None
        _signature(cfg, deployer, sha, tag, out)
        if not rev:
            _automatic_gates(cfg, state.is_bad(sha), changed, out)
            _fleet_mark(deployer, sha, state.is_bad(sha), out)
        _inspect(deployer, sha, live.sha if live else None, live.venv if live else None,
                 state.left_by_live(), changed, out)
    return _decide(out)


def _signature(cfg: Config, deployer: Deployer, sha: str, tag: str | None,
               out: dict[str, Any]) -> None:
    verifier = Verifier.from_config(cfg.git, deployer.layout.repo, deployer.layout.state_dir)
    if not verifier.enabled:
        out["signature"] = {"verdict": "off"}
        return
    verdicts = [verifier.commit(sha)] + ([verifier.tag(tag)] if tag else [])
    out["signature"] = [v.to_dict() for v in verdicts]
    out["refusals"] += [v.message for v in verdicts if not v.ok]


def _automatic_gates(cfg: Config, bad: bool, changed: frozenset[str] | None,
                     out: dict[str, Any]) -> None:
    """What only the daemon's (and --once's) checks obey: bad commits, path filters, holds."""
    if bad:
        out["refusals"].append("known bad: it failed before; only `watcher deploy REV` "
                               "retries it")
    skip = PathFilter(cfg.git.paths, cfg.git.ignore_paths).skip_reason(changed)
    out["skip"] = skip
    now = utc_now()
    held = hold(active_pause(cfg, now), schedule_of(cfg), now)
    out["hold"] = {"reason": held.reason, "detail": held.detail,
                   "until": iso(held.until) if held.until else None} if held else None


def _fleet_mark(deployer: Deployer, sha: str, known: bool, out: dict[str, Any]) -> None:
    """With [fleet], a commit another server marked bad is refused here too, as the next
    check would (Redis unreachable: the plan says so, the check would be transient)."""
    if deployer.rollout is None or known:
        return
    try:
        mark = deployer.rollout.refused(sha)
    except TransientError as exc:
        out["notes"].append(f"fleet: cannot read the fleet's bad marks ({exc}): the next "
                            "check would stop there (exit 3)")
        return
    if mark is not None:
        out["refusals"].append(f"marked bad by {mark.get('host')} at step {mark.get('step')}: "
                               f"{mark.get('message')}; not deployed on this server")


def _inspect(deployer: Deployer, sha: str, live_sha: str | None, live_venv: str | None,
             left: frozenset[str], changed: frozenset[str] | None, out: dict[str, Any]) -> None:
    """Export into a temp dir, venv, Django gate and inspection; the temp dir removed."""
    cfg, layout = deployer.cfg, deployer.layout
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=layout.state_dir))
    try:
        release = tmp / "release"
        deployer.git.export(sha, release)
        digest = venvs.venv_hash(release, cfg.build.requirements, cfg.build.python)
        plan = make_plan(PlanInput(
            live_sha=live_sha, live_venv=live_venv, target_sha=sha, target_venv=digest,
            venv_ready=venvs.is_complete(layout.venvs, digest), changed=changed), cfg)
        out["steps"] = [{"name": s.name, "action": s.action, "reason": s.reason}
                        for s in plan.steps]
        venv_step = next(s for s in plan.steps if s.name == "venv")
        out["venv"] = {"hash": digest, "action": venv_step.action, "reason": venv_step.reason}
        out["collectstatic"] = _step_view(plan.steps, "collectstatic")
        out["reload"] = _reloads(cfg, plan.action("reload") or "hup")
        out["migrations"] = {"action": plan.action("migrate") or "never", "pending": []}
        try:
            if venv_step.action == "build":
                venvs.build(layout.venvs, digest, release, python=cfg.build.python,
                            requirements=cfg.build.requirements, pip_args=cfg.build.pip_args,
                            timeout=cfg.build.timeout)
            out["venv"]["built_now"] = venv_step.action == "build"
            os.symlink(layout.venvs / digest, release / venvs.LINK)  # absolute: not in releases/
            link_shared(layout, release, [p for p in cfg.build.shared
                                          if (layout.shared / p).exists()])
            inspection = Django(cfg.django, release).inspect(
                gate=True, classify=cfg.django.migration_safety != "off").with_left(left)
        except StepFailed as exc:
            out["refusals"].append(f"{exc.step}: {exc.message}")
            out["error"] = {"step": exc.step, "message": exc.message,
                            "output_tail": exc.output_tail[-2000:]}
            return
        out["migrations"]["pending"] = [
            {"name": name, "class": _migration_class(inspection, name),
             "operations": [f"{v.operation}: {v.klass}: {v.why}" for v in inspection.verdicts
                            if v.migration == name]}
            for name in inspection.pending]
        policy = decide(inspection, cfg.django.migration_safety, first_deploy=live_sha is None,
                        allow_unsafe=False, left=left)
        if policy.refusal:
            out["refusals"].append(policy.refusal)
        out["notes"] += policy.warnings
        if out["collectstatic"]["action"] == "carry" and inspection.static_dir_in(release) is None:
            out["collectstatic"] = {"action": "skip", "reason": "nothing local to carry: remote "
                                    "static storage or STATIC_ROOT outside the release"}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _migration_class(inspection: Inspection, name: str) -> str | None:
    """The class of DESIGN §2a of one pending migration: contract when all its operations
    are (it runs after the switch), else the worst of them; None when not classified
    (`django.migration_safety = "off"`)."""
    classes = {v.klass for v in inspection.verdicts if v.migration == name}
    if not classes:
        return None
    if name in inspection.contract():
        return "contract"
    return next(k for k in ("unsafe", "unknown", "safe", "contract") if k in classes)


def _step_view(steps: Any, name: str) -> dict[str, str]:
    for s in steps:
        if s.name == name:
            return {"action": s.action, "reason": s.reason}
    return {"action": "never", "reason": f"django.{name} = never"}


def _reloads(cfg: Config, mode: str) -> list[dict[str, str]]:
    """How each supervisord program is reloaded: the web programs by the plan's mode (one
    colour of a blue/green pair), workers stopped and started after health."""
    web = list(cfg.supervisor.programs)
    if mode == "bluegreen" and cfg.bluegreen is not None:
        web += [f"{p} (blue/green: the idle one starts)" for p in cfg.bluegreen.programs]
    out = [{"program": p, "action": mode} for p in web]
    out += [{"program": w, "action": "restart after health"} for w in cfg.supervisor.workers]
    return out


def _done(out: dict[str, Any], decision: str, note: str) -> dict[str, Any]:
    out.update(decision=decision, exit_code=EXIT_OK)
    out["notes"].append(note)
    return out


def _decide(out: dict[str, Any]) -> dict[str, Any]:
    if out["refusals"]:
        out.update(decision="refuse", exit_code=EXIT_FAILED)
    elif out.get("skip"):
        out.update(decision="skip", exit_code=EXIT_OK)
    elif out.get("hold"):
        out.update(decision="hold", exit_code=EXIT_OK)
    else:
        out.update(decision="deploy", exit_code=EXIT_OK)
    return out


def print_preview(p: dict[str, Any]) -> None:
    t = p["target"]
    live = p["live"]
    tag = f" (tag {t['tag']})" if t.get("tag") else ""
    print(f"plan:         {t['sha'][:12]}{tag} -> {p['decision'].upper()}")
    print(f"live:         {live['release'] + ' (' + live['sha'][:12] + ')' if live else 'none'}")
    for note in p["notes"]:
        print(f"  {note}")
    if p["decision"] == "up_to_date":
        return
    commits = p.get("commits", [])
    print(f"commits:      {len(commits)}")
    for c in commits[:20]:
        print(f"  {c['sha'][:12]} {c['author']}: {c['subject']}")
    sig = p.get("signature")
    if isinstance(sig, list):
        for v in sig:
            print(f"signature:    {v['verdict']}: {v['message']}")
    else:
        print("signature:    not checked (git.verify = off)")
    if "venv" in p:
        v = p["venv"]
        print(f"venv:         {v['action']} {v['hash']} ({v['reason']})")
    if "migrations" in p:
        m = p["migrations"]
        names = [f"{x['name']}" + (f" [{x['class']}]" if x.get("class") else "")
                 for x in m["pending"]]
        print(f"migrations:   {', '.join(names) if names else 'none pending'}"
              f" (django.migrate: {m['action']})")
        for x in m["pending"]:
            for op in x.get("operations", []):
                print(f"  {x['name']}: {op}")
    if "collectstatic" in p:
        c = p["collectstatic"]
        print(f"collectstatic: {c['action']} ({c['reason']})")
    for r in p.get("reload", []):
        print(f"reload:       {r['program']}: {r['action']}")
    if p.get("skip"):
        print(f"skip:         {p['skip']}")
    if p.get("hold"):
        h = p["hold"]
        print(f"hold:         {h['detail']}" + (f" until {h['until']}" if h["until"] else ""))
    for r in p["refusals"]:
        print(f"REFUSED:      {r}")
    if p.get("error", {}).get("output_tail"):
        print(p["error"]["output_tail"])

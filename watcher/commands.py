"""What each command does, given a checked config. Returns the exit code; never exits."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from watcher.config import Config
from watcher.engine.deploy import Deployer, Outcome
from watcher.errors import GitError, UsageError
from watcher.log import scrub
from watcher.parts import lock
from watcher.parts.state import StateFile


def _say(outcome: Outcome) -> int:
    sha = outcome.sha[:12] if outcome.sha else "-"
    print(scrub(f"{outcome.outcome}: {sha} {outcome.release or ''} {outcome.message}".rstrip()))
    return outcome.exit_code


def once(cfg: Config, args: argparse.Namespace) -> int:
    from watcher.control import current_user

    deployer = Deployer(cfg)
    outcome = deployer.check_once(trigger="cli", actor=current_user())
    deployer.journal.flush()  # reports and mails a past run could not deliver (cron users)
    deployer.empty_trash()  # pruned releases and venvs, deleted after we exit
    return _say(outcome)


def deploy(cfg: Config, args: argparse.Namespace) -> int:
    try:
        from watcher.control import current_user

        deployer = Deployer(cfg)
        outcome = deployer.deploy_rev(args.rev, lock_wait=args.wait,
                                      allow_unsafe=args.allow_unsafe_migrations,
                                      actor=current_user())
        deployer.empty_trash()
        return _say(outcome)
    except GitError as exc:
        # Only resolving REV raises GitError out of deploy_rev (git failures inside the deploy
        # become StepFailed): a rev git does not know is the operator's typo, exit 2.
        raise UsageError(f"{exc}; `git ls-remote` lists what the remote has") from None


def rollback(cfg: Config, args: argparse.Namespace) -> int:
    from watcher.control import current_user
    from watcher.engine.rollback import rollback as do_rollback

    return _say(do_rollback(Deployer(cfg), args.release, lock_wait=args.wait,
                            migrate=args.migrate, actor=current_user()))


def status(cfg: Config, args: argparse.Namespace) -> int:
    from watcher.control import hold_status, print_hold_status

    if args.fleet:  # [fleet]: every server's heartbeat, from Redis
        from watcher import fleetstatus

        fleet = fleetstatus.collect(cfg)
        if args.json:
            print_json(fleet)
        else:
            print("\n".join(fleetstatus.render(fleet)))
        return 0
    state = StateFile(cfg.state_dir / "state.json").load()
    live = state.live_record()
    last = state.history[-1] if state.history else None
    holder = lock.holder(cfg.state_dir / "lock")
    holds = hold_status(cfg, state)
    data = {
        **holds,
        "app": cfg.app.name,
        "live": {"release": live.name, "sha": live.sha, "venv": live.venv,
                 "colour": live.colour or None, "tag": live.tag or None} if live else None,
        "last_check": state.last_check or None,
        "last_outcome": {k: last.get(k) for k in
                         ("event", "outcome", "to_sha", "release", "finished_at", "error")}
        if last else None,
        "lock_holder": holder,
        "bad_commits": sorted(state.bad),
    }
    if args.json:
        print_json(data)
        return 0
    print(f"app:          {cfg.app.name}")
    if live:
        colour = f", {live.colour}" if live.colour else ""
        tag = f", tag {live.tag}" if live.tag else ""
        print(f"live:         {live.name} ({live.sha[:12]}{colour}{tag})")
    else:
        print("live:         nothing deployed")
    lc = state.last_check
    print(f"last check:   {lc.get('at', 'never')} {lc.get('result', '')}".rstrip())
    if last:
        print(f"last outcome: {last.get('outcome')} {last.get('event')} "
              f"{str(last.get('to_sha'))[:12]} at {last.get('finished_at')}")
        err = last.get("error")
        if isinstance(err, dict):
            print(scrub(f"  error:      {err.get('step')}: {err.get('message')}"))
    print_hold_status(holds)
    print(f"lock:         {'held by pid ' + str(holder) if holder else 'free'}")
    if state.bad:
        print(f"bad commits:  {', '.join(s[:12] for s in state.bad)}")
    return 0


def history(cfg: Config, args: argparse.Namespace) -> int:
    """The last N deploys and rollbacks: `--json` oldest first (a slice of state.json's
    history, for scripts); the text form newest first, one line each (like `git log`)."""

    if args.n < 1:
        raise UsageError("-n must be at least 1")
    entries = StateFile(cfg.state_dir / "state.json").load().history[-args.n:]
    if args.json:
        print_json(entries)
        return 0
    for e in reversed(entries):
        steps = " ".join(f"{s['name']}={s['duration_s']:.1f}s" for s in e.get("steps", [])
                         if s.get("outcome") != "skipped")
        by = str(e.get("trigger") or "-") + (f" ({e['actor']})" if e.get("actor") else "")
        tag = f" [{e['tag']}]" if e.get("tag") else ""
        print(f"{e.get('finished_at')}  {e.get('event'):8} {e.get('outcome'):15} "
              f"{str(e.get('from_sha') or '-')[:12]} -> {str(e.get('to_sha'))[:12]}{tag}  "
              f"{e.get('duration_s')}s  {by}  {steps}")
    if not entries:
        print("no deploys yet", file=sys.stderr)
    return 0


def check(cfg: Config, args: argparse.Namespace) -> int:
    from watcher.checkup import run_checks

    return run_checks(cfg)


def run(cfg: Config, args: argparse.Namespace) -> int:
    from watcher.daemon.loop import Daemon

    return Daemon(cfg).run()


def trigger(cfg: Config, args: argparse.Namespace) -> int:
    from watcher.daemon.loop import trigger as send

    return send(cfg)


def print_json(data: object) -> None:
    sys.stdout.write(scrub(json.dumps(data, indent=2, sort_keys=True, default=str)) + "\n")


# -- issue 14: plan, pause, resume -------------------------------------------------------
def plan(cfg: Config, args: argparse.Namespace) -> int:
    from watcher.engine.preview import preview, print_preview

    try:
        result = preview(Deployer(cfg), args.rev)
    except GitError as exc:
        raise UsageError(f"{exc}; `git ls-remote` lists what the remote has") from None
    if args.json:
        print_json(result)
    else:
        print_preview(result)
    return int(result["exit_code"])


def pause(cfg: Config, args: argparse.Namespace) -> int:
    from watcher.control import pause as do_pause

    record = do_pause(cfg, args.reason, args.until)
    until = f" until {record['until']}" if record["until"] else " until `watcher resume`"
    print(f"paused by {record['by']}{until}: automatic deploys (poll, webhooks, trigger, "
          "SIGUSR1, --once) wait; `watcher deploy REV` and `rollback` still work")
    return 0


def resume(cfg: Config, args: argparse.Namespace) -> int:
    from watcher.control import resume as do_resume

    record = do_resume(cfg)
    if record is None:
        print("not paused")
        return 0
    hinted = try_hint(cfg)
    print("resumed: automatic deploys go ahead"
          + ("; the daemon checks now" if hinted else ""))
    return 0


def try_hint(cfg: Config) -> bool:
    """After `resume`: ask a running daemon to check now (best effort, quietly)."""
    from watcher.daemon.loop import trigger_key_path
    from watcher.daemon.webhooks import send_trigger

    with contextlib.suppress(Exception):
        key = trigger_key_path(cfg).read_bytes().strip()
        return send_trigger(cfg.webhook.listen, key, timeout=2.0) == 202
    return False

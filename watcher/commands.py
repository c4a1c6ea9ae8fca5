"""What each command does, given a checked config. Returns the exit code; never exits."""

from __future__ import annotations

import argparse
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
    deployer = Deployer(cfg)
    outcome = deployer.check_once()
    deployer.journal.flush()  # reports and mails a past run could not deliver (cron users)
    return _say(outcome)


def deploy(cfg: Config, args: argparse.Namespace) -> int:
    try:
        return _say(Deployer(cfg).deploy_rev(args.rev, lock_wait=args.wait))
    except GitError as exc:
        # Only resolving REV raises GitError out of deploy_rev (git failures inside the deploy
        # become StepFailed): a rev git does not know is the operator's typo, exit 2.
        raise UsageError(f"{exc}; `git ls-remote` lists what the remote has") from None


def rollback(cfg: Config, args: argparse.Namespace) -> int:
    from watcher.engine.rollback import rollback as do_rollback

    return _say(do_rollback(Deployer(cfg), args.release, lock_wait=args.wait))


def status(cfg: Config, args: argparse.Namespace) -> int:

    state = StateFile(cfg.state_dir / "state.json").load()
    live = state.live_record()
    last = state.history[-1] if state.history else None
    holder = lock.holder(cfg.state_dir / "lock")
    data = {
        "app": cfg.app.name,
        "live": {"release": live.name, "sha": live.sha, "venv": live.venv,
                 "colour": live.colour or None} if live else None,
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
        print(f"live:         {live.name} ({live.sha[:12]}{colour})")
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
        print(f"{e.get('finished_at')}  {e.get('event'):8} {e.get('outcome'):15} "
              f"{str(e.get('from_sha') or '-')[:12]} -> {str(e.get('to_sha'))[:12]}  "
              f"{e.get('duration_s')}s  {steps}")
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

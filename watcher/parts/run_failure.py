"""How a failed command is told: the command as an operator knows it (`manage.py migrate`,
`git fetch`) and the last line it printed, scrubbed. Reports, forge statuses and fleet-wide
bad marks carry only this message; the output's tail travels beside it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from watcher.errors import StepFailed
from watcher.log import scrub

CAUSE_CHARS = 200


def failure(step: str, argv: Sequence[str], returncode: int, output: str, timeout: float,
            *, timed_out: bool = False) -> StepFailed:
    """The step's error for a command that timed out or exited non-zero; with its output's
    last line (a traceback's exception) when it exited."""
    name = command_name(argv)
    if timed_out:
        message = f"{name} timed out after {timeout:g}s"
    else:
        message = f"{name} exited with status {returncode}"
        lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
        if lines:
            cause = lines[-1]
            cut = cause if len(cause) <= CAUSE_CHARS else cause[:CAUSE_CHARS - 1] + "…"
            message += f": {cut}"
    return StepFailed(step, scrub(message), output, timed_out=timed_out)


def command_name(argv: Sequence[str]) -> str:
    """`manage.py migrate` for `.venv/bin/python manage.py migrate --noinput`, `git fetch`
    for `git -C /srv/app/repo fetch ...`: the program, past a `setpriv ... --` wrapper and
    the interpreter, and its subcommand (the first word that is not an option or a path)."""
    args = list(argv)
    if args and Path(args[0]).name == "setpriv" and "--" in args:
        args = args[args.index("--") + 1:]
    if len(args) > 1 and Path(args[0]).name.startswith("python") and args[1].endswith(".py"):
        args = args[1:]
    if not args:
        return "?"
    name = Path(args[0]).name
    for arg in args[1:]:
        if arg.startswith("-") or "/" in arg:
            continue
        return f"{name} {arg}"
    return name

"""The command line (DESIGN §5). The only place that turns errors into exit codes."""

from __future__ import annotations

import argparse
import contextlib
import gc
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from watcher import __version__, log
from watcher.config import Config
from watcher.config_load import config_path, load
from watcher.errors import EXIT_FAILED, EXIT_USAGE, ConfigError, UsageError, WatcherError
from watcher.init import command as init_command

Handler = Callable[[Config, argparse.Namespace], int]


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, metavar="PATH",
                        help="config file (default: $WATCHER_CONFIG or /etc/watcher/watcher.toml)")
    common.add_argument("--log-level", default=argparse.SUPPRESS,
                        choices=["debug", "info", "warning", "error"])
    p = argparse.ArgumentParser(prog="watcher", parents=[common],
                                description="Continuous deployment for a Django site.")
    p.add_argument("--once", action="store_true", help="one check; deploy if the branch moved")
    p.add_argument("--version", action=_Version, nargs=0,
                   help="watcher's version, its Python and the venv installer")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("run", parents=[common], help="the daemon: poll loop and webhook server")
    sub.add_parser("once", parents=[common], help="one check; deploy if the branch moved")
    d = sub.add_parser("deploy", parents=[common], help="deploy a commit, tag or branch now")
    d.add_argument("rev")
    d.add_argument("--allow-unsafe-migrations", action="store_true",
                   help="deploy even when migrations would break the live code "
                        "(docs/migrations.md)")
    r = sub.add_parser("rollback", parents=[common], help="switch to the previous release")
    r.add_argument("release", nargs="?")
    r.add_argument("--migrate", action="store_true",
                   help="first reverse the migrations the older release does not know")
    s = sub.add_parser("status", parents=[common], help="live release and last check")
    s.add_argument("--json", action="store_true")
    s.add_argument("--fleet", action="store_true",
                   help="with [fleet]: every server's live release, last outcome, heartbeat")
    h = sub.add_parser("history", parents=[common],
                       help="past deploys: newest first (--json: oldest first)")
    h.add_argument("-n", type=int, default=10, metavar="N")
    h.add_argument("--json", action="store_true")
    sub.add_parser("check", parents=[common], help="validate config and reach every part")
    sub.add_parser("trigger", parents=[common], help="ask the running daemon to check now")
    # -- issue 14: plan, pause, resume --
    pl = sub.add_parser("plan", parents=[common],
                        help="what a deploy of REV (default: the next check's) would do")
    pl.add_argument("rev", nargs="?")
    pl.add_argument("--json", action="store_true")
    pa = sub.add_parser("pause", parents=[common], help="hold automatic deploys back")
    pa.add_argument("--reason", default="", metavar="TEXT")
    pa.add_argument("--until", default=None, metavar="TIME|DURATION",
                    help='ends by itself: "2h", "18:00", "2026-12-01 09:00" (schedule.timezone)')
    sub.add_parser("resume", parents=[common], help="end a pause")
    for action in (d, r):
        action.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                            help="wait this long for another watcher's lock")
    init_command.add_parser(sub)  # `watcher init`: needs no config
    return p


class _Version(argparse.Action):
    """Like argparse's "version", without re-wrapping the lines (and only built when asked)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(version_text())
        parser.exit()


def version_text() -> str:
    """`watcher --version`: watcher, the Python it runs on, what builds the app's venvs."""
    import platform
    from importlib import metadata

    try:
        uv = f"uv {metadata.version('uv')}"
    except metadata.PackageNotFoundError:
        uv = "uv (not installed: set build.installer = \"pip\")"
    return (f"watcher {__version__}\n"
            f"python {platform.python_version()} ({sys.executable})\n"
            f"venv installer: {uv} (build.installer default; \"pip\" uses the venv's pip)")


def entry() -> int:
    """The `watcher` command and `python -m watcher`: `main`, then what is left of the run is
    frozen out of the garbage collector. Python's last collections at exit otherwise walk
    every object the run made, about 0.15 s after a deploy, in every process; the memory
    goes back to the system either way, and atexit handlers, thread joins and output
    flushing happen as before."""
    code = main()
    gc.freeze()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.once:
        if args.command not in (None, "once"):
            parser.error("--once takes no command")
        args.command = "once"
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    log.configure(getattr(args, "log_level", "info"))
    logger = structlog.get_logger()
    try:
        if args.command == "init":
            return init_command.main(args)
        cfg = load(config_path(getattr(args, "config", None)))
        _register_secrets(cfg)
        return _handler(args.command)(cfg, args)
    except (ConfigError, UsageError) as exc:
        kind = "config error" if isinstance(exc, ConfigError) else "error"
        print(f"watcher: {kind}: {log.scrub(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except WatcherError as exc:
        logger.error("watcher.error", error=str(exc), exit_code=exc.exit_code,
                     transient=exc.transient)
        return exc.exit_code
    except KeyboardInterrupt:
        logger.warning("watcher.interrupted")
        return 130
    except Exception:  # a bug: its traceback goes through the log's scrubber, not raw
        logger.exception("watcher.crashed")
        return EXIT_FAILED


def _register_secrets(cfg: Config) -> None:
    """Tell the scrubber every configured secret now, not at its first use: a step's output
    (or an error) may carry one before watcher itself reads it. Each use reads the file
    again and registers what it finds, so a rotated secret is blanked too. Best effort: an
    unreadable file is reported where it is used."""
    email = cfg.email.password_file if cfg.email is not None else ""
    fleet = cfg.fleet.password_file if cfg.fleet is not None else ""
    for path in (cfg.git.token_file, cfg.supervisor.password_file, cfg.report.token_file,
                 cfg.webhook.secret_file, email, fleet):
        if path:
            with contextlib.suppress(OSError, UnicodeError):
                log.register_secret(Path(path).read_text(encoding="utf-8").strip())


def _handler(command: str) -> Handler:
    # Imported here so `watcher --help` and config errors stay fast and light.
    from watcher import commands

    handlers: dict[str, Handler] = {
        "once": commands.once,
        "deploy": commands.deploy,
        "rollback": commands.rollback,
        "status": commands.status,
        "history": commands.history,
        "check": commands.check,
        "run": commands.run,
        "trigger": commands.trigger,
        "plan": commands.plan,
        "pause": commands.pause,
        "resume": commands.resume,
    }
    return handlers[command]

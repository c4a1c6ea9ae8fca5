"""What a release's Django tells watcher, as plain data: the gate's `Inspection` (STATIC_ROOT,
pending migrations and their classes, step 9a's `SmokeReport`), a `Reversal` for
`rollback --migrate`, and `SmokeSpec`, what the smoke requests ask for.

`django_steps.Django` runs the release's Django and fills these in; the engine decides from
them (which migrations run before the switch, whether the static files are carried over).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import structlog

from watcher.errors import StepFailed
from watcher.log import scrub

log = structlog.get_logger()
DOCS = "docs/migrations.md"
# In-release helpers: plain Python files that the gate's script reads and execs.
INRELEASE = Path(__file__).resolve().parent / "inrelease"
LOCAL_STATIC = (
    "django.contrib.staticfiles.storage.StaticFilesStorage",
    "django.contrib.staticfiles.storage.ManifestStaticFilesStorage",
    "django.core.files.storage.FileSystemStorage",
    "",
)


@dataclass(frozen=True)
class Verdict:
    """The class of one pending migration operation (DESIGN 2a)."""

    migration: str  # app.name
    operation: str  # AddField(visit.path)
    klass: str  # safe | contract | unsafe | unknown
    why: str
    fix: str

    def line(self) -> str:
        """`app.migration: Operation(model.field): why; how to fix`."""
        text = f"{self.migration}: {self.operation}: {self.why}"
        return f"{text}; {self.fix}" if self.fix else text


def refusal(unsafe: list[Verdict]) -> str:
    """The gate's error for unsafe migrations, one operation a line (DESIGN 2a)."""
    n = len(unsafe)
    head = (f"{n} migration operation{'s' if n != 1 else ''} would break the live release "
            f"while it serves on the new schema ({DOCS}):")
    return "\n  ".join([head, *(v.line() for v in unsafe)])


@dataclass(frozen=True)
class Reversal:
    """Migrations applied now that an older release does not know (DESIGN 2a)."""

    migrations: tuple[str, ...]  # app.name, in the order Django unapplies them
    commands: tuple[tuple[str, str], ...]  # `migrate APP TARGET`, in dependency order
    irreversible: tuple[str, ...]  # "app.name: RunPython cannot be reversed"
    problems: tuple[str, ...]  # why it cannot be worked out at all


@dataclass(frozen=True)
class SmokeSpec:
    """What step 9a requests: the health URL's path (its Host header, its scheme) and each of
    `paths`; `expect`, when set, must appear in the health path's body. `static_pending`
    defers the requests past collectstatic when the static storage keeps a manifest."""

    url: str
    paths: tuple[str, ...] = ()
    expect: str = ""
    static_pending: bool = False  # collectstatic runs (or is carried over) after the gate

    def prelude(self) -> str:
        """Script lines that load inrelease/smoke.py and define `watcher_smoke(pending)`,
        which the gate's `_INSPECT` calls when it finds it."""
        parts = urlsplit(self.url)
        netloc = parts.netloc.rpartition("@")[2]  # never hand credentials to the release
        spec = {"url": urlunsplit(parts._replace(netloc=netloc)), "paths": list(self.paths),
                "expect": self.expect, "static_pending": self.static_pending}
        path = str(INRELEASE / "smoke.py")
        return (
            "_ns = {'__name__': 'watcher_smoke'}\n"
            f"with open({path!r}, encoding='utf-8') as _f:\n"
            f"    exec(compile(_f.read(), {path!r}, 'exec'), _ns)\n"
            f"watcher_smoke_spec = {spec!r}\n"
            "watcher_smoke = lambda pending: _ns['in_gate'](watcher_smoke_spec, pending)\n"
        )


@dataclass(frozen=True)
class SmokeReport:
    """What the smoke requests found: `deferred` (why they did not run in this boot), or one
    result per path and `error` for what stopped all of them."""

    deferred: str = ""
    host: str = ""
    results: tuple[dict[str, Any], ...] = ()
    error: str = ""
    rolled_back: tuple[str, ...] = ()
    not_rolled_back: tuple[str, ...] = ()
    ms: float = 0.0  # what the requests cost in the Django process, imports included
    cpu_ms: float = 0.0  # the same in CPU time: what a quiet machine would wait

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SmokeReport:
        return cls(deferred=str(data.get("deferred", "")), host=str(data.get("host", "")),
                   results=tuple(data.get("results", ())), error=str(data.get("error", "")),
                   rolled_back=tuple(data.get("rolled_back", ())),
                   not_rolled_back=tuple(data.get("not_rolled_back", ())),
                   ms=float(data.get("ms", 0.0)), cpu_ms=float(data.get("cpu_ms", 0.0)))

    def verdict(self, step: str = "smoke") -> None:
        """Log each request; raise StepFailed naming the first failing path, its status and
        the (scrubbed) tail of its traceback or body."""
        if self.deferred:
            return
        for r in self.results:
            log.info("smoke.request", path=scrub(str(r["path"])), status=r["status"],
                     ms=r["ms"], problem=scrub(str(r["problem"])) or None)
        log.info("smoke.done", host=self.host, paths=len(self.results), ms=self.ms,
                 cpu_ms=self.cpu_ms)
        if self.not_rolled_back:
            log.warning("smoke.not_rolled_back", databases=list(self.not_rolled_back))
        if self.error:
            raise StepFailed(step, scrub(self.error))
        failed = [r for r in self.results if r["problem"]]
        if failed:
            first = failed[0]
            more = f" (and {len(failed) - 1} more path(s))" if len(failed) > 1 else ""
            message = (f"GET {first['path']} (Host {self.host}) {first['problem']}{more}; "
                       "nothing was switched")
            raise StepFailed(step, scrub(message), scrub(str(first["detail"])))


@dataclass(frozen=True)
class Inspection:
    static_root: str
    static_backend: str
    pending: tuple[str, ...]
    verdicts: tuple[Verdict, ...] = ()
    leaves: dict[str, str] = field(default_factory=dict)  # app -> newest migration known
    smoke: SmokeReport | None = None  # step 9a run in the gate's boot (or deferred)

    def with_left(self, left: frozenset[str]) -> Inspection:
        """The same inspection with the contract migrations in `left`, which the live release
        left pending, classed safe: the live code was built without what they remove, so they
        may run before the switch, also when a new migration depends on them."""
        if not left:
            return self
        why = "a contract migration the live release left pending: its code no longer uses it"
        return replace(self, verdicts=tuple(
            replace(v, klass="safe", why=why, fix="") if v.migration in left else v
            for v in self.verdicts))

    def of_class(self, klass: str) -> list[Verdict]:
        return [v for v in self.verdicts if v.klass == klass]

    def contract(self) -> list[str]:
        """Pending migrations made only of contract operations: they run after the switch."""
        by: dict[str, set[str]] = {}
        for v in self.verdicts:
            by.setdefault(v.migration, set()).add(v.klass)
        return [m for m in self.pending if by.get(m) == {"contract"}]

    def before_switch_targets(self) -> list[tuple[str, str]] | None:
        """`migrate APP NAME` targets that apply every pending migration but the contract
        ones; None when there are none to hold back (then a plain `migrate` does it).

        A contract migration has no pending dependant that runs before the switch (else it
        is unsafe), so per app it sits after all of that app's before-switch migrations."""
        held = set(self.contract())
        if not held:
            return None
        targets: dict[str, str] = {}
        for key in self.pending:
            app, name = key.split(".", 1)
            if key not in held:
                targets[app] = name
        return list(targets.items())

    def static_dir_in(self, release: Path) -> Path | None:
        """STATIC_ROOT when it lies inside the release and storage is local, else None."""
        if not self.static_root or self.static_backend not in LOCAL_STATIC:
            return None
        root = Path(self.static_root)
        try:
            rel = root.resolve().relative_to(release.resolve())
        except ValueError:
            return None
        return release / rel

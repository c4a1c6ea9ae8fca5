"""Prometheus metrics: one registry per daemon, served at `GET /metrics`.

A dedicated `CollectorRegistry` (not prometheus_client's global one) keeps every `Metrics`
independent, so tests and a `--once` run can create as many as they like. Label values are
checked against small fixed sets: an unbounded label (a branch name, an error message) would
grow the exposition without limit, and a typo should fail a test, not a scrape.

With [fleet], every series also carries `host` (fleet.host, default the hostname), so one
Prometheus scraping several servers tells them apart even behind a shared job label.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from watcher import kinds

CHECK_RESULTS = ("unchanged", "deployed", "failed", "transient", "skipped", "waiting")
DEPLOY_OUTCOMES = kinds.DEPLOY_OUTCOMES
WEBHOOK_SOURCES = ("github", "gitlab", "gitea", "bitbucket", "generic", "trigger")
WEBHOOK_RESULTS = ("queued", "ignored", "malformed", "unauthorized", "too_large", "error")

# A deploy takes from a second (HUP, nothing to build) to ten minutes (a fresh venv).
DEPLOY_BUCKETS = (
    1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 450.0, 600.0,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST


def _checked(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")
    return value


class Metrics:
    """The daemon's metrics; every method is safe to call from any thread."""

    def __init__(self, host: str = "") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._host = (host,) if host else ()
        extra = ["host"] if host else []
        self._checks = Counter(
            "watcher_checks",
            "Checks of the remote branch, by result.",
            ["result", *extra],
            registry=self.registry,
        )
        self._deploys = Counter(
            "watcher_deploys",
            "Finished deploys, by outcome.",
            ["outcome", *extra],
            registry=self.registry,
        )
        self._duration = Histogram(
            "watcher_deploy_duration_seconds",
            "Wall time of a deploy, from fetch to the last step.",
            extra,
            buckets=DEPLOY_BUCKETS,
            registry=self.registry,
        )
        self._last_success = Gauge(
            "watcher_last_success_timestamp_seconds",
            "Unix time of the last deploy that succeeded.",
            extra,
            registry=self.registry,
        )
        self._live = Gauge(
            "watcher_live_revision_info",
            "The commit the live release was built from (1 for the live sha only).",
            ["sha", *extra],
            registry=self.registry,
        )
        self._webhooks = Counter(
            "watcher_webhooks",
            "Webhook and trigger requests, by source and result.",
            ["forge", "result", *extra],
            registry=self.registry,
        )
        self._paused = Gauge(
            "watcher_paused",
            "1 while `watcher pause` holds automatic deploys back, else 0.",
            extra,
            registry=self.registry,
        )
        self._waiting = Gauge(
            "watcher_waiting",
            "1 while a new head waits for a pause to end or a deploy window to open.",
            extra,
            registry=self.registry,
        )
        self._lock = threading.Lock()
        self._live_sha: str | None = None
        # Series that exist from the start read 0 instead of being absent, so rate() and
        # alerts work before the first event.
        for result in CHECK_RESULTS:
            self._checks.labels(result, *self._host)
        for outcome in DEPLOY_OUTCOMES:
            self._deploys.labels(outcome, *self._host)
        if host:  # labelled metrics have no series until first used; these read 0 at once
            self._duration.labels(host)
            self._last_success.labels(host)
            self._paused.labels(host)
            self._waiting.labels(host)

    def check(self, result: str) -> None:
        """Count one check of the remote: unchanged | deployed | failed | transient."""
        self._checks.labels(_checked(result, CHECK_RESULTS, "check result"), *self._host).inc()

    def deploy(self, outcome: str, duration_s: float, at: float | None = None) -> None:
        """Count one finished deploy; a success also sets the last-success time (`at`, or now)."""
        self._deploys.labels(_checked(outcome, DEPLOY_OUTCOMES, "deploy outcome"),
                             *self._host).inc()
        duration = self._duration.labels(*self._host) if self._host else self._duration
        duration.observe(max(0.0, duration_s))
        if outcome == "succeeded":
            last = self._last_success.labels(*self._host) if self._host else self._last_success
            last.set(time.time() if at is None else at)

    def live_revision(self, sha: str) -> None:
        """Mark `sha` as the live revision; the previous sha's series is removed."""
        with self._lock:
            if self._live_sha == sha:
                return
            if self._live_sha is not None:
                self._live.remove(self._live_sha, *self._host)
            self._live.labels(sha, *self._host).set(1)
            self._live_sha = sha

    def paused_from(self, provider: Callable[[], bool]) -> None:
        """Read the paused gauge from `provider` at each scrape: a `watcher pause` shows at
        once, not at the next check."""
        paused = self._paused.labels(*self._host) if self._host else self._paused
        paused.set_function(lambda: 1.0 if provider() else 0.0)

    def waiting(self, waiting: bool) -> None:
        gauge = self._waiting.labels(*self._host) if self._host else self._waiting
        gauge.set(1 if waiting else 0)

    def webhook(self, forge: str, result: str) -> None:
        """Count one webhook or trigger request by its source and how it was answered."""
        self._webhooks.labels(
            _checked(forge, WEBHOOK_SOURCES, "webhook source"),
            _checked(result, WEBHOOK_RESULTS, "webhook result"),
            *self._host,
        ).inc()

    def render(self) -> bytes:
        """The registry in Prometheus text exposition format (see `CONTENT_TYPE`)."""
        return generate_latest(self.registry)

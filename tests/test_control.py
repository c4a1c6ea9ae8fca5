"""`watcher pause` / `resume` and what `status` and `/metrics` say about holds, on a bare app
root (no site needed); `--until` with an injected clock."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from support.fixtures import run_cli

from watcher.config import Config
from watcher.config_load import load
from watcher.control import active_pause, hold_status, pause, resume
from watcher.daemon.metrics import Metrics
from watcher.errors import UsageError
from watcher.parts.state import State

NOW = datetime(2026, 11, 30, 10, 0, tzinfo=timezone.utc)  # a Monday


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "watcher.toml"
    path.write_text(f'[app]\nname = "x"\nroot = "{tmp_path / "app"}"\n[git]\nremote = "/r.git"\n'
                    '[supervisor]\nprograms = ["x"]\n[schedule]\n'
                    'windows = ["mon-fri 12:00-13:00"]\ntimezone = "Europe/Paris"\n')
    return path


def cfg_of(path: Path) -> Config:
    return load(path, environ={})


def test_pause_and_resume_from_the_command_line(config: Path) -> None:
    """`pause --reason --until` writes who, why and until into `.watcher/pause.json` (0600);
    `status` shows it in both forms; `resume` removes it and says so."""
    res = run_cli("pause", "--reason", "db upgrade", "--until", "2h", "--config", str(config))
    assert res.returncode == 0, res.stderr
    file = config.parent / "app" / ".watcher" / "pause.json"
    record = json.loads(file.read_text())
    assert record["reason"] == "db upgrade" and record["by"] and record["until"]
    assert file.stat().st_mode & 0o777 == 0o600
    status = run_cli("status", "--json", "--config", str(config))
    data = json.loads(status.stdout)
    assert data["paused"]["reason"] == "db upgrade"
    assert data["schedule"]["windows"] == ["mon-fri 12:00-13:00"]
    text = run_cli("status", "--config", str(config)).stdout
    assert "paused:       by" in text and "db upgrade" in text and "windows:" in text
    res = run_cli("resume", "--config", str(config))
    assert res.returncode == 0 and "resumed" in res.stdout
    assert not file.exists()
    assert json.loads(run_cli("status", "--json", "--config", str(config)).stdout)["paused"] is None
    assert "not paused" in run_cli("resume", "--config", str(config)).stdout


def test_bad_until_is_a_usage_error(config: Path) -> None:
    """An `--until` that is unreadable or past is exit 2 and pauses nothing."""
    res = run_cli("pause", "--until", "last tuesday", "--config", str(config))
    assert res.returncode == 2 and "--until" in res.stderr
    assert not (config.parent / "app" / ".watcher" / "pause.json").exists()
    with pytest.raises(UsageError):
        pause(cfg_of(config), "", "2026-11-30 09:00", now=NOW)


def test_until_pause_ends_by_itself(config: Path) -> None:
    """With the clock injected, a pause `--until 18:00` (Paris) is in force at 16:59 UTC and
    over at 17:00 UTC, without anyone running `resume`."""
    cfg = cfg_of(config)
    record = pause(cfg, "freeze", "18:00", by="ops", now=NOW)
    assert record["until"] == "2026-11-30T17:00:00Z"
    assert active_pause(cfg, NOW + timedelta(hours=6, minutes=59)) is not None
    assert active_pause(cfg, NOW + timedelta(hours=7)) is None
    held = hold_status(cfg, State(), NOW)
    assert held["paused"]["by"] == "ops"
    after = hold_status(cfg, State(), NOW + timedelta(hours=7))
    assert after["paused"] is None
    assert after["schedule"]["open"] is False
    assert after["schedule"]["next_open"] == "2026-12-01T11:00:00Z"  # 12:00 Paris
    assert resume(cfg) is not None


def test_status_names_the_waiting_head(config: Path) -> None:
    """A check that found a new head held back records it; `status` shows it with the hold
    and until when."""
    cfg = cfg_of(config)
    state = State(last_check={"at": "2026-11-30T10:00:00Z", "result": "waiting",
                              "remote_sha": "a" * 40, "hold": "outside_window"})
    waiting = hold_status(cfg, state, NOW)["waiting"]
    assert waiting == {"sha": "a" * 40, "tag": None, "since": "2026-11-30T10:00:00Z",
                       "reason": "outside_window", "until": "2026-11-30T11:00:00Z"}


def test_metrics_paused_gauge_reads_the_pause_at_scrape(config: Path) -> None:
    """`watcher_paused` follows the pause file at each scrape: 1 after `pause`, 0 after
    `resume`, with no check in between."""
    cfg = cfg_of(config)
    metrics = Metrics()
    metrics.paused_from(lambda: active_pause(cfg) is not None)
    assert b"watcher_paused 0.0" in metrics.render()
    pause(cfg, "", None, by="ops")
    assert b"watcher_paused 1.0" in metrics.render()
    resume(cfg)
    assert b"watcher_paused 0.0" in metrics.render()

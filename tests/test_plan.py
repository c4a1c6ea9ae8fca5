"""Table tests of the pure planner `watcher.engine.plan.make_plan`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from watcher.config import Config
from watcher.config_load import build
from watcher.engine.plan import PlanInput, go_live_steps, make_plan, reload_mode
from watcher.engine.steps import TABLE

LIVE, NEW = "a" * 40, "b" * 40
OLD_VENV, NEW_VENV = "1111111111111111", "2222222222222222"


def config(**sections: dict[str, Any]) -> Config:
    """The minimal valid config (health on, no shared paths, no hooks) plus `sections`."""
    base: dict[str, dict[str, Any]] = {
        "app": {"name": "mysite", "root": "/srv/mysite"},
        "git": {"remote": "/srv/remote.git"},
        "supervisor": {"programs": ["mysite"]},
        "health": {"url": "http://127.0.0.1:8000/healthz"},
    }
    for name, table in sections.items():
        base.setdefault(name.replace("__", "."), {}).update(table)
    return build(base, Path("t.toml"), {})


def first() -> PlanInput:
    return PlanInput(live_sha=None, live_venv=None, target_sha=NEW, target_venv=NEW_VENV,
                     venv_ready=False, changed=None)


def code_only(*paths: str) -> PlanInput:
    return PlanInput(live_sha=LIVE, live_venv=OLD_VENV, target_sha=NEW, target_venv=OLD_VENV,
                     venv_ready=True, changed=frozenset(paths or ("pages/views.py",)))


def new_venv(*paths: str, ready: bool = False) -> PlanInput:
    return PlanInput(live_sha=LIVE, live_venv=OLD_VENV, target_sha=NEW, target_venv=NEW_VENV,
                     venv_ready=ready, changed=frozenset(paths or ("requirements.txt",)))


BLUEGREEN = {"programs": ["mysite_blue", "mysite_green"],
             "health_urls": ["http://127.0.0.1:8001/healthz", "http://127.0.0.1:8002/healthz"]}

# id, input, config sections, {step: expected action, or None for "no such step"}
CASES: list[tuple[str, PlanInput, dict[str, dict[str, Any]], dict[str, str | None]]] = [
    ("first deploy", first(), {},
     {"venv": "build", "migrate": "auto", "collectstatic": "run", "reload": "restart",
      "health": "run", "shared": None, "pre_switch": None, "contract_migrate": None,
      "smoke": "run", "export": "full"}),
    ("smoke requests need a health URL", code_only(), {"health": {"url": ""}},
     {"smoke": None, "health": None}),
    ("smoke requests with blue/green only", code_only(),
     {"health": {"url": ""}, "bluegreen": {"programs": ["b", "g"],
                                           "health_urls": ["http://x/h", "http://y/h"]}},
     {"smoke": "run", "health": "run"}),
    ("code only", code_only(), {},
     {"venv": "reuse", "migrate": "auto", "collectstatic": "carry", "reload": "rolling",
      "contract_migrate": "auto", "export": "link"}),
    ("migration_safety off: no contract step", code_only(),
     {"django": {"migration_safety": "off"}}, {"migrate": "auto", "contract_migrate": None}),
    ("template only", code_only("pages/templates/pages/index.html"), {},
     {"collectstatic": "carry", "reload": "rolling"}),
    ("gunicorn config changed: a HUP re-reads it", code_only("gunicorn.conf.py"), {},
     {"reload": "hup"}),
    ("reload rolling asked for", new_venv(), {"supervisor": {"reload": "rolling"}},
     {"reload": "rolling"}),
    ("requirements changed", new_venv("requirements.txt"), {},
     {"venv": "build", "collectstatic": "run", "reload": "restart"}),
    ("venv built before, e.g. a rollback target", new_venv(ready=True), {},
     {"venv": "reuse", "reload": "restart"}),
    ("new interpreter, same requirements", new_venv("pages/views.py"), {},
     {"venv": "build", "collectstatic": "run", "reload": "restart"}),
    ("static file changed", code_only("pages/static/pages/site.css"), {},
     {"venv": "reuse", "collectstatic": "run", "reload": "rolling"}),
    ("static suffix outside static/", code_only("assets/app.js"), {},
     {"collectstatic": "run"}),
    ("settings module changed", code_only("mysite/settings.py"), {},
     {"collectstatic": "run", "reload": "rolling"}),
    ("settings package changed", code_only("mysite/settings/prod.py"), {},
     {"collectstatic": "run"}),
    ("other requirements file changed", code_only("requirements/base.txt"),
     {"build": {"requirements": ["requirements/base.txt"]}}, {"collectstatic": "run"}),
    ("changes unknown (history rewritten)",
     PlanInput(LIVE, OLD_VENV, NEW, OLD_VENV, True, None), {},
     {"collectstatic": "run", "reload": "hup"}),
    ("migrate never", code_only(), {"django": {"migrate": "never"}},
     {"migrate": None, "contract_migrate": None}),
    ("migrate always", code_only(), {"django": {"migrate": "always"}}, {"migrate": "run"}),
    ("collectstatic never, static changed", code_only("pages/static/x.css"),
     {"django": {"collectstatic": "never"}}, {"collectstatic": None}),
    ("collectstatic always, code only", code_only(),
     {"django": {"collectstatic": "always"}}, {"collectstatic": "run"}),
    ("reload hup even with a new venv", new_venv(), {"supervisor": {"reload": "hup"}},
     {"venv": "build", "reload": "hup"}),
    ("reload restart even for code only", code_only(), {"supervisor": {"reload": "restart"}},
     {"reload": "restart"}),
    ("auto + bluegreen, venv changed", new_venv(), {"bluegreen": BLUEGREEN},
     {"venv": "build", "reload": "bluegreen"}),
    ("auto + bluegreen, code only", code_only(), {"bluegreen": BLUEGREEN},
     {"reload": "rolling"}),
    ("no health url", code_only(), {"health": {"url": ""}}, {"health": None}),
    ("shared paths", code_only(), {"build": {"shared": [".env", "media"]}},
     {"shared": "link"}),
    ("hooks", code_only(),
     {"hooks": {"pre_switch": ["python manage.py warm"], "post_switch": [["true"]]}},
     {"pre_switch": "run", "post_switch": "run"}),
]


@pytest.mark.parametrize(("inp", "sections", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_plan_actions(inp: PlanInput, sections: dict[str, dict[str, Any]],
                      expected: dict[str, str | None]) -> None:
    """Each situation gets the step actions DESIGN §2 gives it (None: step left out)."""
    plan = make_plan(inp, config(**sections))
    assert {name: plan.action(name) for name in expected} == expected


def test_first_deploy_step_order() -> None:
    """A first deploy runs the gate, Django steps, switch, reload, health and prune in order."""
    plan = make_plan(first(), config())
    assert plan.names == ("fetch", "export", "venv", "check", "migrate", "collectstatic",
                          "smoke", "switch", "reload", "health", "prune")


def test_every_step_in_order_with_everything_configured() -> None:
    """Shared links come first, pre_switch hooks and then the smoke requests just before the
    switch, post_switch hooks after the health check and pruning last."""
    plan = make_plan(code_only(), config(
        build={"shared": ["data"]},
        hooks={"pre_switch": [["true"]], "post_switch": [["true"]]},
    ))
    assert plan.names == ("fetch", "export", "shared", "venv", "check", "migrate",
                          "collectstatic", "pre_switch", "smoke", "switch", "reload",
                          "health", "contract_migrate", "post_switch", "prune")


def test_plan_reasons_name_the_changed_path() -> None:
    """The reason for running collectstatic names the path that caused it, for the log."""
    plan = make_plan(code_only("pages/views.py", "mysite/settings.py"), config())
    [step] = [s for s in plan.steps if s.name == "collectstatic"]
    assert "mysite/settings.py" in step.reason


def test_fetch_only_when_the_mirror_lacks_the_commit() -> None:
    """The fetch step runs when the commit is not in the mirror yet, and says why not when
    it is."""
    assert make_plan(code_only(), config()).action("fetch") == "skip"
    missing = PlanInput(LIVE, OLD_VENV, NEW, OLD_VENV, True, None, have_commit=False)
    assert make_plan(missing, config()).action("fetch") == "run"


def test_every_step_is_a_row_of_the_table_in_table_order() -> None:
    """Every step the planner emits is a kind of the step table, in the table's order, so
    the executor, the step log and the fault matrix read one list."""
    plan = make_plan(code_only(), config(
        build={"shared": ["data"]},
        hooks={"pre_switch": [["true"]], "post_switch": [["true"]]},
    ))
    order = [kind.name for kind in TABLE]
    assert [order.index(n) for n in plan.names] == sorted(order.index(n) for n in plan.names)
    assert plan.phase("go_live") == go_live_steps(
        config(), "rolling", "code only: new workers first, the old ones retire once they serve")


@pytest.mark.parametrize(("live", "target", "sections", "expected"), [
    (None, NEW_VENV, {}, "restart"),
    (OLD_VENV, OLD_VENV, {}, "hup"),  # changes unknown (a rollback by hand, recovery)
    (OLD_VENV, NEW_VENV, {}, "restart"),
    (OLD_VENV, NEW_VENV, {"bluegreen": BLUEGREEN}, "bluegreen"),
    (OLD_VENV, OLD_VENV, {"bluegreen": BLUEGREEN}, "hup"),
    (OLD_VENV, OLD_VENV, {"supervisor": {"reload": "restart"}}, "restart"),
])
def test_reload_mode_is_decided_in_one_place(live: str | None, target: str,
                                            sections: dict[str, dict[str, Any]],
                                            expected: str) -> None:
    """`reload_mode`, which deploys, rollbacks and recovery all ask, follows the venv and
    `supervisor.reload`; the plan's reload step is its answer."""
    mode, reason = reload_mode(config(**sections), live_venv=live, target_venv=target)
    assert mode == expected and reason


# -- supervisor.workers (step 12b) -----------------------------------------------------------
@pytest.mark.parametrize(("inp", "sections"), [
    (code_only(), {}),
    (new_venv(), {}),
    (new_venv(), {"bluegreen": BLUEGREEN, "supervisor": {"programs": []}}),
])
def test_workers_restart_right_after_health_whatever_the_reload(
        inp: PlanInput, sections: dict[str, dict[str, Any]]) -> None:
    """With supervisor.workers the plan restarts them right after the health check, by HUP,
    restart or colour swap alike; and rollbacks and recovery (`go_live_steps`) do too."""
    cfg = config(**{**sections, "supervisor": {
        **sections.get("supervisor", {"programs": ["mysite"]}),
        "workers": ["celery", "celerybeat"]}})
    plan = make_plan(inp, cfg)
    names = list(plan.names)
    assert names.index("workers") == names.index("health") + 1
    assert plan.action("workers") == "restart"
    assert "celery, celerybeat" in (plan.step("workers") or plan.steps[0]).reason
    assert [s.name for s in go_live_steps(cfg, "hup", "back")] == [
        "switch", "reload", "health", "workers"]


def test_no_workers_no_workers_step() -> None:
    """Without supervisor.workers nothing is planned for them."""
    assert make_plan(code_only(), config()).action("workers") is None


# -- issue 14: signatures ----------------------------------------------------------------------
@pytest.mark.parametrize(("git", "names"), [
    ({}, ["fetch", "export"]),
    ({"verify": "ssh", "allowed_signers_file": "/etc/watcher/allowed_signers"},
     ["fetch", "verify", "export"]),
    ({"verify": "gpg", "gpg_keys_file": "/etc/watcher/keys.asc"}, ["fetch", "verify", "export"]),
])
def test_verify_runs_between_fetch_and_export(git: dict[str, Any], names: list[str]) -> None:
    """With `git.verify`, the commit's signature is checked after the fetch and before
    anything is exported; without it there is no such step."""
    plan = make_plan(code_only(), config(git=git))
    assert list(plan.names[:len(names)]) == names
    assert plan.action("verify") == (git.get("verify") or None)

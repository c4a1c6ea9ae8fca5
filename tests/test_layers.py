"""The layers of watcher/ (docs/architecture.md), kept by reading every module's imports.

Rules: parts import no engine, delivery or daemon module, and other parts only through the
shared modules in SHARED_PARTS (a module split out of one part, OWNED_PARTS, only from that
part); delivery imports no part, engine or daemon module; the base modules import no layer;
the engine imports no daemon module; and no import cycle exists anywhere (imports inside
functions count: a lazy import still ties two modules).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "watcher"
LAYERS = ("engine", "parts", "delivery", "daemon")
SHARED_PARTS = frozenset({"watcher.parts.runner", "watcher.parts.fs", "watcher.parts.procs"})
# Modules split out of one part, imported by that part alone (the engine may read them too):
# release_tree (how exports land in a release), django_findings (what a release's Django
# reports), supervisor_link (the XML-RPC wire), run_failure (how a failed command is told)
# venv_bytecode (bytecode a new venv borrows from the live one) and release_spare (the next
# release's base, linked ahead of time), warm_gate (a Django boot started ahead of time),
# orphans (the records of the runner's children that a killed watcher leaves).
OWNED_PARTS = {"watcher.parts.release_tree": "watcher.parts.gitsource",
               "watcher.parts.django_findings": "watcher.parts.django_steps",
               "watcher.parts.supervisor_link": "watcher.parts.supervisor_rpc",
               "watcher.parts.run_failure": "watcher.parts.runner",
               "watcher.parts.venv_bytecode": "watcher.parts.venvs",
               "watcher.parts.release_spare": "watcher.parts.gitsource",
               "watcher.parts.warm_gate": "watcher.parts.django_steps",
               "watcher.parts.orphans": "watcher.parts.runner"}
BASE = frozenset({"watcher", "watcher.errors", "watcher.kinds", "watcher.log",
                  "watcher.config", "watcher.config_load", "watcher.config_checks",
                  "watcher.config_values"})


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the watcher modules it imports (a package import counts as its __init__)."""
    modules = {module_name(root, p): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    deps.add(sub if sub in modules else node.module)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in LAYERS else "top"


def violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for mod, deps in sorted(graph.items()):
        for dep in sorted(deps):
            here, there = layer(mod), layer(dep)
            why = ""
            if here == "parts" and there in ("engine", "delivery", "daemon"):
                why = "parts import no engine, delivery or daemon module"
            elif here == "parts" and there == "parts" and dep not in SHARED_PARTS \
                    and dep != "watcher.parts" and OWNED_PARTS.get(dep) != mod \
                    and OWNED_PARTS.get(dep, "-") != OWNED_PARTS.get(mod):
                why = (f"parts import other parts only through {sorted(SHARED_PARTS)}, "
                       f"and a module split out of a part only from that part (or another "
                       f"module split out of the same part)")
            elif here == "delivery" and there in ("parts", "engine", "daemon"):
                why = "delivery imports no part, engine or daemon module"
            elif mod in BASE and there != "top":
                why = "the base modules import no layer"
            elif here == "engine" and there == "daemon":
                why = "the engine imports no daemon module"
            if why:
                found.append(f"{mod} imports {dep}: {why}")
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_layers_are_kept() -> None:
    """No module of watcher/ imports across a layer boundary the architecture forbids."""
    assert violations(import_graph(PACKAGE)) == []


def test_no_import_cycles() -> None:
    """No two modules of watcher/ import each other, directly or through others."""
    assert cycles(import_graph(PACKAGE)) == []


@pytest.mark.parametrize(("module", "source", "expected"), [
    ("parts/venvs.py", "from watcher.parts.releases import remove\n",
     "parts import other parts only through"),
    ("parts/state.py", "from watcher.engine import deploy\n",
     "parts import no engine, delivery or daemon module"),
    ("delivery/mail.py", "def f():\n    from watcher.parts.state import State\n",
     "delivery imports no part"),
    ("errors.py", "import watcher.daemon.loop\n", "the base modules import no layer"),
])
def test_the_checker_sees_a_forbidden_import(tmp_path: Path, module: str, source: str,
                                             expected: str) -> None:
    """A forbidden import added to a copy of the tree is reported, naming the rule."""
    root = tmp_path / "watcher"
    for path in PACKAGE.rglob("*.py"):
        target = root / path.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    with (root / module).open("a") as f:
        f.write(source)
    assert any(expected in v for v in violations(import_graph(root)))


def test_the_checker_sees_a_cycle(tmp_path: Path) -> None:
    """Two modules importing each other (even lazily) are reported as a cycle."""
    root = tmp_path / "watcher"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "cli.py").write_text("from watcher.commands import run\n")
    (root / "commands.py").write_text("def run():\n    from watcher.cli import main\n")
    assert cycles(import_graph(root)) == [["watcher.cli", "watcher.commands"]]

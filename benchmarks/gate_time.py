"""What the migration classes (DESIGN 2a) add to the gate's Django boot, on the example app.

    .venv/bin/python benchmarks/gate_time.py [rounds]

Copies examples/mysite into a temp dir (the dev venv as its `.venv`), migrates it, and runs
the gate (`manage.py check` + inspection in one boot) alternately as it was before the
classes and as it is now, `rounds` times each (default 15): first with nothing pending (a
code-only deploy), then with one pending AddField. Prints the medians of the gate's wall
time and CPU time (the child's user+sys, steadier on a loaded machine) before and after,
and of the added lines alone, timed inside the Django boot.
"""

from __future__ import annotations

import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from watcher.config import DjangoConfig
from watcher.parts import django_steps
from watcher.parts.django_steps import Django

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mysite"
PENDING = '''from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("pages", "0001_initial")]
    operations = [migrations.AddField("visit", "size", models.IntegerField(default=0))]
'''


# The gate as it was before the classes: the same script without their lines.
BEFORE = "from django.core.management import call_command\ncall_command('check')\n" + "".join(
    line for line in django_steps._INSPECT.splitlines(keepends=True)
    if "_mc" not in line and "OUT" not in line)


# The classes' lines alone, timed inside the boot (immune to the machine's load on the rest).
ADDED = "".join(line for line in django_steps._INSPECT.splitlines(keepends=True)
                if "_mc" in line or "OUT" in line)
TIMED = (BEFORE.replace("print(", "import time\n_t0 = time.perf_counter()\n" + ADDED
                        + "print('ADDED', time.perf_counter() - _t0)\nprint(", 1))


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def medians(django: Django, rounds: int) -> tuple[float, ...]:
    """Median wall and CPU time of the gate before and after, and of the added lines."""
    wall: dict[bool, list[float]] = {True: [], False: []}
    spent: dict[bool, list[float]] = {True: [], False: []}
    added: list[float] = []
    for _ in range(rounds):
        for classify in (False, True):
            started, cpu0 = time.perf_counter(), cpu()
            if classify:
                django.inspect(gate=True, classify=True)
            else:
                django.manage("shell", "--verbosity", "0", "-c", BEFORE, step="check")
            wall[classify].append(time.perf_counter() - started)
            spent[classify].append(cpu() - cpu0)
        with tempfile.TemporaryDirectory() as tmp:
            out = django.manage("shell", "--verbosity", "0", "-c",
                                f"OUT = {tmp + '/out'!r}\nCLASSIFY = True\n" + TIMED,
                                step="check").output
        added.append(float(out.split("ADDED ", 1)[1].split()[0]))
    return (*(statistics.median(x) for x in (wall[False], wall[True], spent[False],
                                              spent[True])), statistics.median(added))


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    with tempfile.TemporaryDirectory(prefix="gate-") as tmp:
        release = Path(tmp) / "release"
        shutil.copytree(EXAMPLE, release, ignore=shutil.ignore_patterns("data", "__pycache__"))
        (release / "data").mkdir()
        (release / ".venv").symlink_to(sys.prefix)
        django = Django(DjangoConfig(), release)
        django.migrate()
        print(f"{'gate, median of ' + str(rounds):<24} {'wall before':>12} {'after':>7} "
              f"{'CPU before':>11} {'after':>7} {'in-boot added':>14}")
        for label in ("nothing pending", "one pending AddField"):
            if label != "nothing pending":
                (release / "pages" / "migrations" / "0002_size.py").write_text(PENDING)
            ms = [x * 1000 for x in medians(django, rounds)]
            print(f"{label:<24} {ms[0]:>10.0f}ms {ms[1]:>5.0f}ms {ms[2]:>9.0f}ms "
                  f"{ms[3]:>5.0f}ms {ms[4]:>12.1f}ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

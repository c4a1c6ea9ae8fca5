"""What the migration classes (DESIGN 2a) add to the gate's Django boot, on the example app.

    .venv/bin/python benchmarks/gate_time.py [rounds]

Copies examples/mysite into a temp dir (the dev venv as its `.venv`), migrates it, and runs
the gate (`manage.py check` + inspection in one boot) alternately as it was before the
classes and as it is now, `rounds` times each (default 15): first with nothing pending (a
code-only deploy), then with one pending AddField. Prints the median wall times and the
difference.
"""

from __future__ import annotations

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


def medians(django: Django, rounds: int) -> tuple[float, float]:
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(rounds):
        for classify in (False, True):
            started = time.perf_counter()
            if classify:
                django.inspect(gate=True, classify=True)
            else:
                django.manage("shell", "--verbosity", "0", "-c", BEFORE, step="check")
            times[classify].append(time.perf_counter() - started)
    return statistics.median(times[False]), statistics.median(times[True])


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    with tempfile.TemporaryDirectory(prefix="gate-") as tmp:
        release = Path(tmp) / "release"
        shutil.copytree(EXAMPLE, release, ignore=shutil.ignore_patterns("data", "__pycache__"))
        (release / "data").mkdir()
        (release / ".venv").symlink_to(sys.prefix)
        django = Django(DjangoConfig(), release)
        django.migrate()
        print(f"{'gate, median of ' + str(rounds):<32} {'without':>9} {'with':>9} {'added':>9}")
        for label in ("nothing pending", "one pending AddField"):
            if label != "nothing pending":
                (release / "pages" / "migrations" / "0002_size.py").write_text(PENDING)
            without, with_ = medians(django, rounds)
            print(f"{label:<32} {without * 1000:>7.0f}ms {with_ * 1000:>7.0f}ms "
                  f"{(with_ - without) * 1000:>+7.1f}ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

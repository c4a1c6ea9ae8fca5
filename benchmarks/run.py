"""`make bench`: watcher against the seed's deploy script (benchmarks/baseline.sh), on
loopback with the example app, in one run. Prints one table and writes it to BENCHMARKS.md
(between the markers; text around them is kept). Targets are reported, not asserted.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import daemon_bench
import exposure
import speed_bench
import wrkload
from daemon_bench import median
from sandbox import Sandbox, free_port

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "BENCHMARKS.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
RATE = 200


def machine() -> str:
    mem = next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal:"))
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False)
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    return (f"{os.cpu_count()} CPUs (nproc), {int(mem) / 1024 / 1024:.1f} GiB RAM, "
            f"Python {platform.python_version()}, Linux {platform.release()}, "
            f"{nginx.stderr.strip().replace('nginx version: ', '')}, "
            f"{(wrk.stdout or wrk.stderr).split(chr(10))[0].split(' [')[0]}")


def under_load(url: str, deploy: Callable[[], float]) -> wrkload.WrkResult:
    load = wrkload.Wrk(url + "/healthz", rate=RATE)
    try:
        time.sleep(1.0)  # steady before the deploy starts
        deploy()
        time.sleep(1.0)  # and after it ended
    finally:
        result = load.stop()
    return result


def steps_of_last_report(sb: Sandbox) -> str:
    doc = sb.site.api.requests[-1].json
    return ", ".join(f"{s['name']} {s['duration_s']:.2f}" for s in doc["steps"])


def measure(sb: Sandbox) -> tuple[list[list[str]], list[str]]:
    notes: list[str] = []
    hooks = free_port()
    nx_w = sb.front("watcher", [], hooks)  # the shipped upstream: the published socket
    nx_b = sb.front("baseline", [sb.base_port])
    print("a: deploy wall time", flush=True)
    code_w, code_b, req_w, req_b = [], [], [], []
    for i in range(REPEAT):
        sb.commit_code(i)
        code_w.append(sb.watcher_deploy())
        code_b.append(sb.baseline_deploy())
    notes.append(f"watcher code-only deploy steps (s): {steps_of_last_report(sb)}")
    code_cold = []  # the same, every gate booted cold (no warm gate is left or used)
    for i in range(REPEAT):
        sb.commit_code(50 + i)
        code_cold.append(sb.watcher_deploy(env={"WATCHER_DJANGO_WARM_GATE": "0"}))
    notes.append(f"watcher code-only deploy steps, cold gate (s): {steps_of_last_report(sb)}")
    for i in range(REPEAT):
        sb.commit_requirements(i)
        req_w.append(sb.watcher_deploy())
        req_b.append(sb.baseline_deploy())
    notes.append(f"watcher requirements deploy steps (s): {steps_of_last_report(sb)}")
    print("b: deploys under load", flush=True)
    load: dict[str, wrkload.WrkResult] = {}
    load["calm-w"] = under_load(nx_w.url, lambda: time.sleep(3.0))
    load["calm-b"] = under_load(nx_b.url, lambda: time.sleep(3.0))
    for kind, commit in (("code", sb.commit_code), ("reqs", sb.commit_requirements)):
        commit(100)
        load[f"{kind}-w"] = under_load(nx_w.url, sb.watcher_deploy)
        load[f"{kind}-b"] = under_load(nx_b.url, sb.baseline_deploy)
    sb.bg.set_reload("hup")  # the same code-only change with a plain HUP (the old default)
    sb.commit_code(200)
    load["code-hup"] = under_load(nx_w.url, sb.watcher_deploy)
    sb.bg.set_reload("bluegreen")  # and swapped instead
    sb.commit_code(300)
    load["code-swap"] = under_load(nx_w.url, sb.watcher_deploy)
    sb.bg.set_reload("auto")
    print("a: venv builds", flush=True)
    builds = speed_bench.venv_builds()
    print("f: 20,000-file repository", flush=True)
    big = speed_bench.big_repo(REPEAT)
    print("d: --once no-op", flush=True)
    once = daemon_bench.once_noop(sb)
    print("c: webhook to serving", flush=True)
    hook = daemon_bench.webhook_to_serving(sb, nx_w.url, hooks)
    print("d/e: 1,000 daemon checks", flush=True)
    checks = daemon_bench.checks(sb, free_port())
    print("f: broken releases under load", flush=True)
    exposed = exposure.rows(sb.bg, nx_w.url)

    def fails(r: wrkload.WrkResult) -> str:
        return f"{r.failed} of {r.requests}"

    def ms(r: wrkload.WrkResult) -> str:
        return f"{r.p99_ms:.1f} ms"

    cw, cb, rw, rb = median(code_w), median(code_b), median(req_w), median(req_b)
    rows = [
        ["a", "deploy wall time, code-only change", f"{cw:.2f} s", f"{cb:.2f} s",
         f"{cw / cb:.0%} of baseline", "≤ 25% of baseline"],
        ["a", "deploy wall time, code-only change, `django.warm_gate = 0`",
         f"{median(code_cold):.2f} s", f"{cb:.2f} s", f"{median(code_cold) / cb:.0%} of baseline",
         "-"],
        ["a", "deploy wall time, requirements change", f"{rw:.2f} s", f"{rb:.2f} s",
         f"{rw / rb:.0%} of baseline", "≤ 100% (stretch 50%)"],
        ["b", f"p99 latency at steady ~{RATE} req/s, no deploy", ms(load["calm-w"]),
         ms(load["calm-b"]), "Nginx → Gunicorn, 2 workers", "-"],
        ["b", f"failed requests during code-only deploy (~{RATE} req/s)",
         fails(load["code-w"]), fails(load["code-b"]), "rolling (TTIN/TTOU) vs restart", "0"],
        ["b", "p99 latency during code-only deploy", ms(load["code-w"]), ms(load["code-b"]),
         f"{load['code-w'].p99_ms / load['calm-w'].p99_ms:.1f}x calm", "≤ 2x calm"],
        ["b", "code-only deploy with `supervisor.reload = \"hup\"` (before): failed, p99",
         f"{fails(load['code-hup'])}, {ms(load['code-hup'])}", "n/a",
         "HUP: old workers stop at once", "-"],
        ["b", "code-only deploy with `supervisor.reload = \"bluegreen\"`: failed, p99",
         f"{fails(load['code-swap'])}, {ms(load['code-swap'])}", "n/a",
         "swap instead of rolling", "-"],
        ["b", f"failed requests during requirements deploy (~{RATE} req/s)",
         fails(load["reqs-w"]), fails(load["reqs-b"]), "blue/green vs restart", "0"],
        ["b", "p99 latency during requirements deploy", ms(load["reqs-w"]),
         ms(load["reqs-b"]), f"{load['reqs-w'].p99_ms / load['calm-w'].p99_ms:.1f}x calm",
         "≤ 2x calm"],
        ["a", "venv build, example app: uv cold / warm cache",
         f"{builds['uv cold']:.2f} s / {builds['uv warm']:.2f} s", "n/a",
         "uv venv + uv pip install, local wheel cache", "warm ≤ 1.5 s"],
        ["a", "venv build, example app: pip (cold / warm)",
         f"{builds['pip cold']:.2f} s / {builds['pip warm']:.2f} s", "n/a",
         "python -m venv + pip, the same wheels", "-"],
        ["f", "code-only deploy: example app / with 20,000 more files",
         f"{median(big['small'][0]):.2f} s / {median(big['big'][0]):.2f} s", "n/a",
         f"{median(big['big'][0]) / median(big['small'][0]):.2f}x", "≤ 1.3x"],
        ["f", "disk per code-only release: example app / with 20,000 more files",
         f"{median(big['small'][1]) / 1e6:.2f} MB / {median(big['big'][1]) / 1e6:.2f} MB",
         "n/a", "bytes not shared with the previous release", "∝ the change"],
        ["c", "signed webhook → new sha served through Nginx (code-only)",
         f"{median(hook):.2f} s", "n/a", f"runs: {', '.join(f'{t:.2f}' for t in hook)}",
         "≤ 3 s"],
        ["d", "`watcher --once`, nothing changed", f"{median(once):.2f} s", "n/a",
         f"runs: {', '.join(f'{t:.2f}' for t in once)}", "≤ 0.5 s"],
        ["d", "daemon CPU per no-op check (incl. git ls-remote)",
         f"{checks['cpu_ms_per_check']:.1f} ms", "n/a",
         f"{checks['wall_ms_per_check']:.0f} ms wall per check", "-"],
        ["e", f"daemon RSS after {int(checks['checks'])} checks", f"{checks['rss_mb']:.1f} MB",
         "n/a", f"{checks['rss_warm_mb']:.1f} MB after 50", "≤ 60 MB"],
        *exposed,
    ]
    for key, label in (("small", "example app"), ("big", f"+{big['files']} files")):
        walls, costs, steps = big[key]
        notes.append(f"code-only deploys, {label}: {_list(walls)} s, "
                     f"{'/'.join(f'{c / 1e6:.2f}' for c in costs)} MB per release; steps (s): "
                     + ", ".join(f"{k} {v:.2f}" for k, v in steps.items()))
    notes.append(f"deploy wall times (s), watcher code-only {_list(code_w)} (cold gate "
                 f"{_list(code_cold)}), baseline "
                 f"{_list(code_b)}; watcher requirements {_list(req_w)}, baseline {_list(req_b)}")
    for key, res in load.items():
        notes.append(f"wrk {key}: {res.requests} requests at {res.rate:.0f} req/s, "
                     f"{res.failed} failed, p99 {res.p99_ms:.1f} ms")
    return rows, notes


def _list(values: list[float]) -> str:
    return "/".join(f"{v:.2f}" for v in values)


def table(rows: list[list[str]]) -> str:
    head = ["row", "measure", "watcher", "baseline", "note", "target"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def write(text: str) -> None:
    block = f"{START}\n{text}\n{END}"
    old = OUT.read_text(encoding="utf-8") if OUT.exists() else ""
    if START in old and END in old:
        new = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, old,
                     flags=re.S)
    else:
        new = f"# Benchmarks\n\n{block}\n"
    OUT.write_text(new, encoding="utf-8")


def main() -> int:
    if not wrkload.available():
        print("wrk is missing: run `make system-deps` (as root)", file=sys.stderr)
        return 2
    # Byte-compile watcher as `pip install` does for an installed wheel: with
    # PYTHONDONTWRITEBYTECODE set (as on this machine), every `python -m watcher` of the
    # editable checkout would otherwise compile its sources again (~0.14 s a run).
    import compileall

    compileall.compile_dir(str(ROOT / "watcher"), quiet=1,
                           rx=re.compile(r"/(templates|inrelease)/"))  # data, not modules
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    sb = Sandbox()
    try:
        sb.start()
        rows, notes = measure(sb)
    finally:
        sb.close()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = (f"Measured {when} by `make bench` (`.venv/bin/python benchmarks/run.py`, "
            f"{time.monotonic() - started:.0f} s) on {machine()}; 1-minute load average "
            f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after (other work on the "
            f"machine shows here).\n\n{table(rows)}\n\n"
            + "\n".join(f"- {n}" for n in notes))
    print("\n" + text)
    write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

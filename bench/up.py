"""Startup and memory: `keelson up` until all five services are ready, and their idle RSS.

    .venv/bin/python bench/up.py --runs 3 --idle 10

`keelson up` runs as a real process in a temporary project folder, with embedded PostgreSQL
and Valkey on free ports (so it never meets a suite already running on 8000-8004):

- cold: a fresh state folder, so the time includes creating the PostgreSQL cluster (initdb);
- warm (`--runs` times): the cluster is there, as on every `make up` after the first.

Time runs from starting the process until every service's `/health/ready` answers 200
(polled every 50 ms by this script), which is what `make up` waits for before printing the
gateway URL. After the last warm run the suite idles `--idle` seconds, then psutil reads
each service's RSS (resident memory, shared pages included) and USS (memory only it holds).

Where the memory goes: for each service a fresh interpreter imports `<package>.app` with an
import hook that reads RSS before and after each module runs; what a module adds, minus the
modules it imports, is charged to its top-level package (as `-X importtime` does for time).
Results are printed and written to the "Startup and memory" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from _docs import write_section

from keelson_dev.embedded import free_port
from keelson_dev.suite import SERVICES, Layout, free_port_block, readiness
from keelson_dev.supervision import Supervisor

KEELSON = Path(sys.executable).parent / "keelson"
MB = 1024 * 1024

# Runs in a fresh interpreter: RSS charged to top-level packages, nested imports excluded.
_ATTRIBUTION = r"""
import importlib, json, os, sys

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE


totals, stack = {}, []


class _Measure:
    def find_spec(self, name, path, target=None):
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or isinstance(loader, type) or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module):
            stack.append(0)
            before = _rss()
            try:
                run(module)
            finally:
                grown = _rss() - before
                nested = stack.pop()
                top = name.partition(".")[0]
                totals[top] = totals.get(top, 0) + grown - nested
                if stack:
                    stack[-1] += grown

        loader.exec_module = exec_module
        return spec


start = _rss()
sys.meta_path.insert(0, _Measure())
importlib.import_module(sys.argv[1] + ".app")
print(json.dumps({"start": start, "end": _rss(), "packages": totals}))
"""


@dataclass
class Run:
    kind: str
    ready_seconds: float
    stop_seconds: float
    rss: dict[str, int] = field(default_factory=dict)
    uss: dict[str, int] = field(default_factory=dict)


def run_once(root: Path, kind: str, *, idle: float | None, timeout: float) -> Run:
    # One block for the HTTP ports and the three ZeroMQ ports after them: two blocks drawn
    # apart could overlap, and a service would find its port taken.
    base_port = free_port_block(len(SERVICES) + 3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEELSON_")}
    env["NO_COLOR"] = "1"
    command = [
        str(KEELSON),
        "up",
        "--root",
        str(root),
        "--base-port",
        str(base_port),
        "--zmq-base-port",
        str(base_port + len(SERVICES)),
        "--postgres-port",
        str(free_port()),
        "--valkey-port",
        str(free_port()),
        "--smtp-port",
        str(free_port()),
        "--timeout",
        str(timeout),
    ]
    log = root / f"up-{kind}.log"
    layout = Layout(root, root / ".keelson", base_port=base_port)
    with log.open("ab") as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=out)
        run = Run(kind, float("nan"), float("nan"))
        try:
            while not all(code == 200 for code in readiness(layout, timeout=1.0).values()):
                if process.poll() is not None or time.perf_counter() - started > timeout:
                    raise RuntimeError(f"keelson up did not get ready:\n{log.read_text()}")
                time.sleep(0.05)
            run.ready_seconds = time.perf_counter() - started
            if idle is not None:
                time.sleep(idle)
                measure_memory(root, run)
        finally:
            stopping = time.perf_counter()
            process.send_signal(signal.SIGTERM)
            process.wait(120)
            run.stop_seconds = time.perf_counter() - stopping
    print(f"{kind}: ready in {run.ready_seconds:.1f} s, stopped in {run.stop_seconds:.1f} s")
    return run


def measure_memory(root: Path, run: Run) -> None:
    supervisor = Supervisor.from_config(root / ".keelson" / "supervisord.conf")
    for info in supervisor.processes():
        process = psutil.Process(info.pid)
        processes = [process, *process.children(recursive=True)]
        run.rss[info.name] = sum(p.memory_info().rss for p in processes)
        run.uss[info.name] = sum(p.memory_full_info().uss for p in processes)


def import_attribution(package: str) -> dict[str, object]:
    out = subprocess.check_output([sys.executable, "-c", _ATTRIBUTION, package], text=True)
    result: dict[str, object] = json.loads(out)
    return result


def render(cold: Run, warm: list[Run], attribution: dict[str, dict[str, object]]) -> str:
    last = warm[-1]
    warm_times = sorted(run.ready_seconds for run in warm)
    lines = [
        "| run | `keelson up` -> all five ready | stop (SIGTERM -> all gone) |",
        "| --- | ---: | ---: |",
        f"| cold (initdb) | {cold.ready_seconds:.1f} s | {cold.stop_seconds:.1f} s |",
    ]
    for n, run in enumerate(warm, 1):
        lines.append(f"| warm {n} | {run.ready_seconds:.1f} s | {run.stop_seconds:.1f} s |")
    lines += [
        "",
        f"Warm median: **{warm_times[len(warm_times) // 2]:.1f} s** (goal <= 15 s).",
        "",
        "| process | idle RSS | USS | RSS after importing its app | heaviest imports (MB) |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for service in SERVICES:
        found = attribution[service.name]
        packages = found["packages"]
        assert isinstance(packages, dict)
        heavy = sorted(packages.items(), key=lambda item: -item[1])[:6]
        heaviest = ", ".join(f"{name} {size / MB:.0f}" for name, size in heavy)
        end = found["end"]
        assert isinstance(end, int)
        lines.append(
            f"| {service.name} | {last.rss[service.name] / MB:.0f} MB "
            f"| {last.uss[service.name] / MB:.0f} MB | {end / MB:.0f} MB | {heaviest} |"
        )
    for name in ("postgres", "valkey"):
        if name in last.rss:
            lines.append(
                f"| {name} (with its children) | {last.rss[name] / MB:.0f} MB "
                f"| {last.uss[name] / MB:.0f} MB | | |"
            )
    return "\n".join(lines)


FINDINGS = " ".join(
    [
        "Where the memory goes: about 10 MB is the interpreter; the rest is what the service",
        "imports, led by SQLAlchemy, redis-py (its command modules alone, about 18 MB),",
        "FastAPI/Starlette/pydantic and cryptography, which every service needs. Two imports",
        "no running service needs were made lazy after this benchmark found them: sentry-sdk",
        "(with gevent and urllib3 it pulls in, about 7 MB; now imported only when SENTRY_DSN",
        "is set) and Alembic (with Mako, Pygments and every SQLAlchemy dialect, about 12 MB;",
        "now imported only to migrate). What the gateway adds at start-up (about 13 MB over",
        "its import) is mostly valkey-py, about 8 MB: `limits`' RedisStorage imports every",
        "client it supports (redis-py, valkey-py) when it is created, and valkey-py is",
        "installed as a dependency of the embedded Valkey wheel. RSS counts shared pages",
        "(libpython, OpenSSL) in each process; USS is what stopping that one process frees.",
    ]
)


def write_docs(body: str, command: str) -> None:
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    section = "\n".join(
        [
            "`keelson up` (what `make up` runs) with embedded PostgreSQL and Valkey, from "
            "starting the process to every `/health/ready` answering 200, and each "
            "service's memory after idling (see the docstring of `bench/up.py`).",
            "",
            f"Command: `{command}`",
            "",
            f"{platform.python_implementation()} {platform.python_version()}, "
            f"{os.cpu_count()} CPUs shared with other work, so figures are noisy (load "
            f"average {load} at the end). Recorded {time.strftime('%Y-%m-%d %H:%M')}.",
            "",
            body,
            "",
            FINDINGS,
        ]
    )
    write_section("Startup and memory", section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="warm runs")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds idle before RSS")
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="keelson-bench-up-"))
    try:
        cold = run_once(root, "cold", idle=None, timeout=args.timeout)
        warm = []
        for n in range(1, args.runs + 1):
            idle = args.idle if n == args.runs else None
            warm.append(run_once(root, f"warm{n}", idle=idle, timeout=args.timeout))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    attribution = {service.name: import_attribution(service.package) for service in SERVICES}
    body = render(cold, warm, attribution)
    print(body)
    if not args.no_docs:
        command = f".venv/bin/python bench/up.py --runs {args.runs} --idle {args.idle:g}"
        write_docs(body, command)


if __name__ == "__main__":
    main()

"""User-space instructions per request: the gateway's whole chain beside the bare proxy.

    .venv/bin/python bench/gateway_instructions.py --redis-url redis://127.0.0.1:6379/5

Timings on a shared two-core machine move by 15% from one run to the next; instruction
counts do not. Each server runs under valgrind's callgrind with instrumentation off, is
warmed up, and counts instructions only while `wrk -t1 -c32` drives it
(`callgrind_control -i on/off`, then `-d` to dump); the count divided by wrk's requests
is the figure, so start-up and shut-down are not in it. The servers, like with like:

- the gateway as it ships: `python -m gateway --workers 1` (granian, its whole chain on
  as in `bench/gateway.py`);
- `bench/gateway.py`'s bare pure-ASGI aiohttp proxy on granian (one worker, HTTP/1,
  uvloop, as the gateway's `gateway/serve.py`): the anchor for the ratio;
- the same bare proxy on uvicorn (httptools, uvloop): the anchor of the figures recorded
  before the gateway moved to granian, kept so that the old and new figures can be read
  together (`--no-uvicorn` skips it).

granian serves from a forked worker process (its main process only supervises); valgrind
follows the fork, and every process of the server's tree is switched on, dumped and
counted (`callgrind.<server>.out.<pid>*`), granian's Rust threads included. The figure
covers user space only: the kernel's work for the sockets is not in it. Under valgrind a
server runs some 50 times slower, so Redis batches are smaller than at full speed and the
gateway's figure leans high by a few percent.

`--two-windows` counts a per-request figure free of the servers' wall-clock work. Under
valgrind a server runs some 50 times slower, while its time-driven work keeps wall-clock
intervals (the gateway's rate-limit linger batch every 5 ms, budget re-read and revocation
re-check every second, console end-of-tick writes, OpenAPI refresh and upstream readiness
checks; the event loop's and granian's timers for both servers): the plain count shares it
among 50 times fewer requests than at full speed, and among fewer still the slower a server
serves. After the plain (saturated) window, the same server is counted in two more windows,
paced by wrk's `delay()` hook at two request rates (`--paced`, shares of the rate the plain
window reached; default 0.6 and 0.2), each window's instructions, requests and wall-clock
seconds recorded (one dump per window, told apart by its `callgrind_control -d` label), and
instructions = a x requests + b x seconds is solved for a (per request) and b (per second).
a is the figure to compare between servers; the plain count is printed beside it, and the
fit's prediction of the plain window's count is printed as a check of the linear model
(the saturated window batches more per event-loop turn than the paced ones). A last window
with no load at all (`idle`) counts what the server runs by the clock alone; each window's
count per request net of that is printed too. Work done once per event-loop turn or per
batch (the console's write, the rate limiter's Redis call) is per request in the paced
windows, where a request rarely shares a turn, and shared at saturation: neither figure is
the full-speed one, which batches far more. (Measured so far, docs/benchmarks.md: the
gateway's idle work is some 175,000 instructions a second, 0.2% of its plain count; its
count is set by batching: 500,000 a request at 32 connections, 760,000 at one.)

Needs valgrind, wrk and nginx (apt-get install valgrind wrk nginx). Results are printed and
written to the "Gateway instructions per request" section of docs/benchmarks.md
(`--no-docs` to skip that); `--keep-dumps DIR` keeps the dumps for
`callgrind_annotate --inclusive=yes`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import yaml
from _docs import write_section
from _gateway_rig import process_tree, upstream_rig

from gateway import BARE_PROXY, PATH, gateway_config, stop, wait_ready, wrk  # bench/gateway.py
from keelson.auth import IdentityKey
from keelson_dev.embedded import free_port

# Production settings need the gateway's identity key pair (keelson.auth._identity).
_IDENTITY = IdentityKey.generate()
IDENTITY_ENV = {
    "KEELSON_IDENTITY__SIGNING_KEY": _IDENTITY.secret_text(),
    "KEELSON_IDENTITY__PUBLIC_KEYS": json.dumps(_IDENTITY.public_keys),
}


# The bare proxy on granian, set as `gateway/serve.py` sets the gateway.
# valgrind's gdbserver, which `callgrind_control` talks to, does not answer in a forked
# child; a worker started by exec (multiprocessing's "spawn", which granian supports) runs
# under a valgrind of its own (--trace-children) that it does answer in. The request path
# is the same either way.
def spawned(module: str) -> list[str]:
    """argv running `python -m module` with multiprocessing set to start by exec."""
    return [
        sys.executable,
        "-c",
        "import multiprocessing, runpy; multiprocessing.set_start_method('spawn'); "
        f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)",
    ]


BARE = "bare pure-ASGI aiohttp proxy"
BARE_ON_GRANIAN = [
    *spawned("granian"),
    *("--interface", "asgi", "--loop", "uvloop"),
    *("--http", "1", "--no-ws", "--workers", "1", "--log-level", "warning"),
    *("--host", "127.0.0.1", "bare_proxy:app"),
]
BARE_ON_UVICORN = [
    *(sys.executable, "-m", "uvicorn", "bare_proxy:app", "--loop", "uvloop"),
    *("--http", "httptools", "--no-access-log", "--log-level", "warning"),
]


@dataclass(frozen=True)
class Window:
    """One counted stretch of a server's life: what its processes ran, for how many
    requests, over how many wall-clock seconds."""

    name: str
    instructions: int
    requests: int
    seconds: float

    @property
    def per_request(self) -> int:
        return self.instructions // self.requests if self.requests else 0

    def net_per_request(self, idle: Window) -> int:
        """Per request once what the server runs idle, per second, is taken off."""
        return round((self.instructions - idle.per_second * self.seconds) / self.requests)

    @property
    def per_second(self) -> float:
        return self.instructions / self.seconds


@dataclass(frozen=True)
class Fit:
    """instructions = per_request x requests + per_second x seconds, from two windows."""

    per_request: float
    per_second: float


def solve(fast: Window, slow: Window) -> Fit:
    """The two unknowns of instructions = a x requests + b x seconds from two windows
    counted at different request rates (Cramer's rule)."""
    det = fast.requests * slow.seconds - slow.requests * fast.seconds
    if det == 0:
        raise RuntimeError("the two windows ran at the same request rate: nothing to solve")
    a = (fast.instructions * slow.seconds - slow.instructions * fast.seconds) / det
    b = (fast.requests * slow.instructions - slow.requests * fast.instructions) / det
    return Fit(a, b)


def pace_script(folder: Path, name: str, connections: int, rate: float, capacity: float) -> Path:
    """A wrk script whose `delay()` makes `connections` send about `rate` requests/s to a
    server that answers `capacity` requests/s when saturated: a connection waits for each
    answer (about 1/capacity at light load) before its delay starts. The rate reached need
    not be exact: the window's own requests and seconds are what the fit uses."""
    delay_ms = max(0, round(1000 * connections / rate - 1000 / capacity))
    script = folder / f"pace-{name}.lua"
    script.write_text(f"function delay() return {delay_ms} end\n")
    return script


def _callgrind(command: str, pids: list[str], *args: str) -> None:
    for pid in pids:
        subprocess.run(["callgrind_control", command, *args, pid], check=True, capture_output=True)


def measure(
    name: str,
    argv: list[str],
    env: dict[str, str],
    cwd: Path,
    headers: dict[str, str],
    seconds: int,
    keep: Path | None = None,
    connections: int = 32,
    paced: tuple[float, float] | None = None,
) -> list[Window]:
    """Count the server's instructions while wrk drives it: one window saturated by
    `connections` (the plain count), then, with `paced` = (fast, slow) as fractions of the
    rate that window reached, two windows at those paced rates and one with no requests at
    all (`idle`: what the server runs per second by the clock alone), all in one server's
    life."""
    port = free_port()
    pids: list[str] = []
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    out = cwd / f"callgrind.{slug}.out"
    port_args = ["--port", str(port)] if "bare_proxy:app" in argv else []
    server = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            "--trace-children=yes",
            f"--callgrind-out-file={out}.%p",  # one file per process of the tree
            *argv,
            *port_args,
        ],
        env={**os.environ, **env, "KEELSON_PORT": str(port), "PYTHONHASHSEED": "0"},
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    counted: list[tuple[str, int, float]] = []  # (window, requests, seconds)
    try:
        url = f"http://127.0.0.1:{port}{PATH}"
        wait_ready(url, headers, timeout=600)  # under valgrind, start-up takes minutes
        wrk(url, headers, 32, 5)  # warm-up, uncounted
        pids = [str(pid) for pid in process_tree(server.pid)]

        def window(label: str, *extra: str) -> None:
            started = time.monotonic()
            _callgrind("-i", pids, "on")
            on = (started + time.monotonic()) / 2  # the processes were switched on in turn
            if label == "idle":  # no load: the window is this long, by the clock
                count, bad = 0, 0
                time.sleep(seconds)
            else:
                _, count, bad = wrk(url, headers, connections, seconds, *extra)
            stopping = time.monotonic()
            _callgrind("-i", pids, "off")
            off = (stopping + time.monotonic()) / 2
            _callgrind("-d", pids, f"window-{label}")  # the dump's `desc: Trigger:` line
            if bad or not (count or label == "idle"):
                raise RuntimeError(f"{name}: {bad} of {count} answers were not 2xx")
            counted.append((label, count, off - on))

        window("plain")
        if paced is not None:
            capacity = counted[0][1] / counted[0][2]
            for label, share in zip(("fast", "slow"), paced, strict=True):
                script = pace_script(cwd, label, connections, share * capacity, capacity)
                window(label, "-s", str(script))
            window("idle")
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            pids = pids or [str(pid) for pid in process_tree(server.pid)]
        stop(server)
        for pid in pids:  # a worker its main process did not take down
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    dumps = list(cwd.glob(f"callgrind.{slug}.out*"))
    windows = []
    for label, count, elapsed in counted:
        total = sum(_dumped(dump) for dump in dumps if _trigger(dump) == f"window-{label}")
        windows.append(Window(label, total, count, elapsed))
    if keep is not None:  # for callgrind_annotate: where the instructions went
        keep.mkdir(parents=True, exist_ok=True)
        for dump in dumps:
            shutil.copy(dump, keep)
    for w in windows:
        print(
            f"{name:<44} {w.name:<5} {w.requests:>6} requests in {w.seconds:5.1f} s "
            f"({w.requests / w.seconds:6.1f}/s)  {w.per_request:>9,} instructions/request, "
            f"{w.per_second:>13,.0f}/s ({len(pids)} processes)",
            flush=True,
        )
    return windows


def scale_intervals(config: Path, scale: float) -> None:
    """Stretch the gateway's time-driven work by `scale` in its config file.

    Under valgrind the gateway serves some 50 times slower, so work done once per interval
    (the rate limiter's batched Redis call every `linger_seconds`, its budget re-read every
    `stats_refresh_seconds`, the revocation re-check every `revocation_recheck_seconds`) is
    shared by 50 times fewer requests than at full speed. Scaled by that slowdown, each
    interval spans as many requests as at full speed: the per-request count then weighs
    that work as a full-speed gateway does.
    """
    values = yaml.safe_load(config.read_text())
    plugins = values["plugins"]
    limits = plugins.setdefault("rate_limiting", {})
    limits["linger_seconds"] = min(1.0, 0.005 * scale)
    limits["stats_refresh_seconds"] = 1.0 * scale
    plugins.setdefault("security", {})["revocation_recheck_seconds"] = 1.0 * scale
    config.write_text(yaml.safe_dump(values))


def _trigger(dump: Path) -> str:
    """What made callgrind write this dump: `window-<label>` for ours (`callgrind_control -d
    window-<label>`), `Program termination` for the one at exit (instrumentation off)."""
    for line in dump.read_text().splitlines():
        if line.startswith("desc: Trigger:"):
            return line.removeprefix("desc: Trigger:").strip().removeprefix("dump ").strip()
    return ""


def _dumped(dump: Path) -> int:
    """The instructions one dump holds: its `totals:` line, else its `summary:` line (a dump
    may have both, the same cost twice)."""
    lines = dump.read_text().splitlines()
    for key in ("totals:", "summary:"):
        for line in lines:
            if line.startswith(key):
                return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=os.environ.get("KEELSON_REDIS_URL"))
    parser.add_argument("--seconds", type=int, default=20, help="of counted load per window")
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--keep-dumps", type=Path, help="copy callgrind's dumps here")
    parser.add_argument(
        "--without",
        action="append",
        default=[],
        metavar="PLUGIN",
        help="run the gateway with this plugin off (what its layer costs); repeatable",
    )
    parser.add_argument("--gateway-only", action="store_true", help="skip the bare proxy")
    parser.add_argument(
        "--connections",
        type=int,
        default=32,
        help="wrk's connections while counting (1: one request at a time, no batching)",
    )
    parser.add_argument("--no-uvicorn", action="store_true", help="skip the bare proxy on uvicorn")
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="multiply the gateway's time-driven intervals by this (valgrind's slowdown, ~50)",
    )
    parser.add_argument(
        "--two-windows",
        action="store_true",
        help="after the plain count, two windows paced at two rates; solve instructions = "
        "a x requests + b x seconds for a (per request) and b (per second)",
    )
    parser.add_argument(
        "--paced",
        type=float,
        nargs=2,
        default=(0.6, 0.2),
        metavar=("FAST", "SLOW"),
        help="the paced windows' rates as shares of the plain window's (default 0.6 0.2)",
    )
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control", "wrk", "nginx"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install valgrind wrk nginx)")
    paced: tuple[float, float] | None = (args.paced[0], args.paced[1]) if args.two_windows else None
    runs: dict[str, list[Window]] = {}
    with upstream_rig("keelson-bench-instr-") as rig:
        (rig.tmp / "bare_proxy.py").write_text(BARE_PROXY)
        servers = [("granian", BARE_ON_GRANIAN), ("uvicorn", BARE_ON_UVICORN)]
        for server, argv in [] if args.gateway_only else servers:
            if server == "uvicorn" and args.no_uvicorn:
                continue
            runs[f"{BARE}, {server}"] = measure(
                f"{BARE}, {server}",
                argv,
                {"BENCH_UPSTREAM": rig.upstream},
                rig.tmp,
                rig.headers,
                args.seconds,
                args.keep_dumps,
                args.connections,
                paced,
            )
        config = gateway_config(rig.tmp / "gateway", rig.upstream, args.redis_url)
        if args.time_scale != 1:
            scale_intervals(config / "keelson.yaml", args.time_scale)
        gateway = (
            "gateway, full chain, 1 worker, granian"
            + (f", intervals x{args.time_scale:g}" if args.time_scale != 1 else "")
            + "".join(f", without {name}" for name in args.without)
        )
        runs[gateway] = measure(
            gateway,
            [*spawned("gateway"), "--workers", "1"],
            {
                "KEELSON_CONFIG_DIR": str(config),
                "KEELSON_ENV": "prod",
                **{f"KEELSON_PLUGINS__{p.upper()}__ENABLED": "false" for p in args.without},
                **IDENTITY_ENV,
            },
            config,
            rig.headers,
            args.seconds,
            args.keep_dumps,
            args.connections,
            paced,
        )
    plain = {name: windows[0].per_request for name, windows in runs.items()}
    fits = {name: solve(w[1], w[2]) for name, w in runs.items()} if paced else {}
    for name, fit in fits.items():
        w = runs[name][0]
        predicted = fit.per_request * w.requests + fit.per_second * w.seconds
        print(
            f"{name:<44} a = {fit.per_request:>9,.0f} instructions/request, "
            f"b = {fit.per_second:>12,.0f} instructions/s "
            f"(plain window: {w.instructions:,} counted, {predicted:,.0f} by the fit)"
        )
        idle = runs[name][3]
        net = ", ".join(f"{x.name} {x.net_per_request(idle):,}" for x in runs[name][:3])
        print(f"{'':<44} idle {idle.per_second:,.0f}/s; per request net of idle: {net}")
    chain = plain[gateway]
    bare = {name.rsplit(", ", 1)[1]: count for name, count in plain.items() if name != gateway}
    # per server: the gateway's per-request term over the bare proxy's
    by_fit = (
        {s: fits[gateway].per_request / fits[f"{BARE}, {s}"].per_request for s in bare}
        if fits
        else {}
    )
    for server, count in bare.items():
        line = f"gateway / bare proxy on {server}: {chain / count:.2f} (plain count)"
        if fits:
            line += f", {by_fit[server]:.2f} (a, per request, two windows)"
        print(line)
    if not bare or args.no_docs or args.without or args.time_scale != 1:
        return
    command = ".venv/bin/python bench/gateway_instructions.py " + shlex.join(sys.argv[1:])
    rows = [
        f"| {name} | {w[0].requests:,} | {w[0].per_request:,} |"
        + (f" {fits[name].per_request:,.0f} | {fits[name].per_second:,.0f} |" if fits else "")
        for name, w in runs.items()
    ]
    ratios = [f"{chain / c:.2f}x the bare proxy's on {s}" for s, c in bare.items()]
    if fits:
        ratios += [
            f"{by_fit[s]:.2f}x on {s} by the per-request term of the two paced windows"
            for s in bare
        ]
    head = "| server | requests counted | instructions per request |"
    rule = "| --- | ---: | ---: |"
    if fits:
        head += " a: per request, two windows | b: per second |"
        rule += " ---: | ---: |"
    write_section(
        "Gateway instructions per request",
        "\n".join(
            [
                "User-space instructions per request under valgrind's callgrind, counted only "
                f"while `wrk -t1 -c{args.connections}` drives the server, for the authenticated "
                "GET of the Gateway section, every process of the server's tree counted: "
                "repeatable where that section's timings are not (see the docstring of "
                "`bench/gateway_instructions.py`). The kernel's work for the sockets is not "
                "counted.",
                "",
                f"Command: `{command.strip()}`. Recorded {time.strftime('%Y-%m-%d %H:%M')} UTC.",
                "",
                head,
                rule,
                *rows,
                "",
                f"The gateway runs {' and '.join(ratios)}.",
            ]
        ),
    )


if __name__ == "__main__":
    main()

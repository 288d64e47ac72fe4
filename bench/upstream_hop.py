"""CPU per upstream exchange: aiohttp's ClientSession beside the gateway's UpstreamPool.

    .venv/bin/python bench/upstream_hop.py [--requests 20000] [--concurrency 32] [--no-docs]

Both send the same GET with the headers the gateway forwards (about ten, one bearer token
and the signed identity among them) to nginx answering `{"ok":true}` on 127.0.0.1, from
`--concurrency` tasks at once on one uvloop, and read the whole answer. The figure is this
process's CPU time (`time.process_time`, the kernel's socket work included) per exchange,
the best of three rounds. nginx runs in its own process and is not counted. The figures go
to the "Gateway upstream hop" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import uvloop
from _docs import write_section
from yarl import URL

# This file sits in bench/, beside bench/gateway.py: that folder must leave sys.path before
# the gateway package can be imported under its own name.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from gateway.upstream_pool import UpstreamPool  # noqa: E402
from keelson_dev.embedded import free_port, wait_for_port  # noqa: E402

PATH = "/api/v1/logs/bench"
HEADERS = [
    ("accept", "*/*"),
    ("user-agent", "wrk"),
    ("authorization", "Bearer " + "x" * 300),
    ("x-forwarded-host", "127.0.0.1:8000"),
    ("x-forwarded-for", "127.0.0.1"),
    ("x-forwarded-proto", "http"),
    ("traceparent", "00-" + "a" * 32 + "-" + "b" * 16 + "-01"),
    ("x-request-id", "c" * 32),
    ("x-keelson-identity", "i" * 200),
]
RAW_HEADERS = [(name.encode(), value.encode()) for name, value in HEADERS]  # as the proxy has them


def start_nginx(directory: Path, port: int) -> subprocess.Popen[bytes]:
    conf = directory / "nginx.conf"
    conf.write_text(
        textwrap.dedent(
            f"""
            worker_processes 1;
            daemon off;
            pid {directory}/nginx.pid;
            error_log {directory}/error.log warn;
            events {{ worker_connections 1024; }}
            http {{
              access_log off;
              client_body_temp_path {directory}/body;
              server {{
                listen 127.0.0.1:{port};
                location / {{ default_type application/json; return 200 '{{"ok":true}}'; }}
              }}
            }}
            """
        )
    )
    return subprocess.Popen(["nginx", "-c", str(conf)], stderr=subprocess.DEVNULL)


async def cpu_per_call(call: Callable[[], Awaitable[None]], requests: int, tasks: int) -> float:
    async def worker(n: int) -> None:
        for _ in range(n):
            await call()

    each = requests // tasks
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        await asyncio.gather(*(worker(each) for _ in range(tasks)))
        best = min(best, (time.process_time() - started) / (each * tasks) * 1e6)
    return best


async def run(port: int, args: argparse.Namespace) -> None:
    base = f"http://127.0.0.1:{port}"
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=256),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
    )
    url = URL(base + PATH, encoded=True)
    timeout = aiohttp.ClientTimeout(total=None, connect=2, sock_read=10)
    pool = UpstreamPool(base, limit=256, keepalive_seconds=4, connect_timeout=2, read_timeout=10)

    async def via_session() -> None:
        async with session.get(url, headers=HEADERS, timeout=timeout) as response:
            await response.read()

    async def via_pool() -> None:
        response = await pool.request("GET", PATH.encode(), RAW_HEADERS)
        try:
            await response.read()
        finally:
            response.release()

    rows = ["| client | CPU us per exchange |", "| --- | ---: |"]
    try:
        for label, call in (("aiohttp ClientSession", via_session), ("UpstreamPool", via_pool)):
            await call()  # connect and warm up
            cpu = await cpu_per_call(call, args.requests, args.concurrency)
            print(f"{label:<24} {cpu:6.1f} us CPU per exchange", flush=True)
            rows.append(f"| {label} | {cpu:.1f} |")
    finally:
        await session.close()
        await pool.close()
    if not args.no_docs:
        command = ".venv/bin/python bench/upstream_hop.py " + shlex.join(sys.argv[1:])
        write_section(
            "Gateway upstream hop",
            "\n".join(
                [
                    "CPU per upstream exchange, the same GET with the gateway's forwarded "
                    f"headers, {args.concurrency} at once, to nginx on 127.0.0.1: aiohttp's "
                    "ClientSession (public API, tuned: no cookies, no decompression) beside "
                    "`gateway.upstream_pool.UpstreamPool` (an `asyncio.Protocol` of ours, "
                    "httptools' response parser, the request head framed from bytes), the best "
                    f"of three rounds of {args.requests:,} (see the docstring of "
                    "`bench/upstream_hop.py`). The pool this one replaced (a subclass of "
                    "aiohttp's private `client_proto.ResponseHandler`) measured 33.7 us beside "
                    "ClientSession's 92.9 us in a run just before, same command.",
                    "",
                    f"Command: `{command.strip()}`. Recorded {time.strftime('%Y-%m-%d %H:%M')}.",
                    "",
                    *rows,
                ]
            ),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    if shutil.which("nginx") is None:
        raise SystemExit("nginx is not installed (apt-get install nginx)")
    directory = Path(tempfile.mkdtemp(prefix="keelson-bench-hop-"))
    os.chmod(directory, 0o755)
    port = free_port()
    nginx = start_nginx(directory, port)
    try:
        wait_for_port(port, timeout=10)
        uvloop.run(run(port, args))
    finally:
        nginx.terminate()
        nginx.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()

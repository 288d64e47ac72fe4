"""User-space instructions per request: the gateway's whole chain beside the bare proxy.

    .venv/bin/python bench/gateway_instructions.py --redis-url redis://127.0.0.1:6379/5

Timings on a shared two-core machine move by 15% from one run to the next; instruction
counts do not. Each server (`python -m gateway`, one worker, its whole chain on as in
`bench/gateway.py`; and that file's bare pure-ASGI aiohttp proxy) runs under valgrind's
callgrind with instrumentation off, is warmed up, and counts instructions only while
`wrk -t1 -c32` drives it (`callgrind_control -i on/off`); the count divided by wrk's
requests is the figure. It covers the process's user space only: the kernel's work for its
sockets is not in it. Under valgrind a server runs some 50 times slower, so Redis batches
are smaller than at full speed and the gateway's figure leans high by a few percent.

Needs valgrind, wrk and nginx (apt-get install valgrind wrk nginx). Results are printed and
written to the "Gateway instructions per request" section of docs/benchmarks.md
(`--no-docs` to skip that).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _docs import write_section

from gateway import (  # bench/gateway.py, beside this file
    BARE_PROXY,
    PATH,
    gateway_config,
    nginx_config,
    spawn,
    stop,
    token,
    wait_ready,
    wrk,
)
from keelson.auth import IdentityKey
from keelson.keys import SigningKey
from keelson_dev.embedded import free_port, wait_for_port

# Production settings need the gateway's identity key pair (keelson.auth._identity).
_IDENTITY = IdentityKey.generate()
IDENTITY_ENV = {
    "KEELSON_IDENTITY__SIGNING_KEY": _IDENTITY.secret_text(),
    "KEELSON_IDENTITY__PUBLIC_KEYS": json.dumps(_IDENTITY.public_keys),
}


def measure(
    name: str,
    argv: list[str],
    env: dict[str, str],
    cwd: Path,
    headers: dict[str, str],
    seconds: int,
    keep: Path | None = None,
    connections: int = 32,
) -> int:
    port = free_port()
    out = cwd / f"callgrind.{name}.out"
    server = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
            *argv,
            *(["--port", str(port)] if "uvicorn" in argv else []),
        ],
        env={**os.environ, **env, "KEELSON_PORT": str(port), "PYTHONHASHSEED": "0"},
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}{PATH}"
        wait_ready(url, headers, timeout=300)  # under valgrind, start-up takes minutes
        wrk(url, headers, 32, 5)  # warm-up, uncounted
        subprocess.run(["callgrind_control", "-i", "on", str(server.pid)], check=True)
        _, count, bad = wrk(url, headers, connections, seconds)
        subprocess.run(["callgrind_control", "-i", "off", str(server.pid)], check=True)
        if bad:
            raise RuntimeError(f"{name}: {bad} of {count} answers were not 2xx")
    finally:
        stop(server)
    totals = 0
    for dump in cwd.glob(f"callgrind.{name}.out*"):
        for line in dump.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                totals += int(line.split()[1])
    per_request = totals // count
    if keep is not None:  # for callgrind_annotate: where the instructions went
        for dump in cwd.glob(f"callgrind.{name}.out*"):
            shutil.copy(dump, keep)
    print(f"{name:<34} {count:>6} requests  {per_request:>9,} instructions/request", flush=True)
    return per_request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=os.environ.get("KEELSON_REDIS_URL"))
    parser.add_argument("--seconds", type=int, default=20, help="of counted load per server")
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
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control", "wrk", "nginx"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install valgrind wrk nginx)")
    tmp = Path(tempfile.mkdtemp(prefix="keelson-bench-instr-"))
    os.chmod(tmp, 0o755)
    key = SigningKey.generate()
    (tmp / "jwks.json").write_text(json.dumps({"keys": [key.public_jwk()]}))
    os.chmod(tmp / "jwks.json", 0o644)
    upstream_port = free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    headers = {"Authorization": f"Bearer {token(key)}"}
    nginx = spawn(["nginx", "-c", str(nginx_config(tmp, upstream_port, free_port()))], cpus=None)
    try:
        wait_for_port(upstream_port, timeout=10)
        (tmp / "bare_proxy.py").write_text(BARE_PROXY)
        uvicorn = [sys.executable, "-m", "uvicorn", "bare_proxy:app", "--loop", "uvloop"]
        bare = (
            0
            if args.gateway_only
            else measure(
                "bare pure-ASGI aiohttp proxy",
                [*uvicorn, "--http", "httptools", "--no-access-log", "--log-level", "warning"],
                {"BENCH_UPSTREAM": upstream},
                tmp,
                headers,
                args.seconds,
                args.keep_dumps,
            )
        )
        config = gateway_config(tmp / "gateway", upstream, args.redis_url)
        chain = measure(
            "gateway, full chain, 1 worker" + "".join(f", without {name}" for name in args.without),
            [sys.executable, "-m", "gateway", "--workers", "1"],
            {
                "KEELSON_CONFIG_DIR": str(config),
                "KEELSON_ENV": "prod",
                **{f"KEELSON_PLUGINS__{p.upper()}__ENABLED": "false" for p in args.without},
                **IDENTITY_ENV,
            },
            config,
            headers,
            args.seconds,
            args.keep_dumps,
            args.connections,
        )
    finally:
        stop(nginx)
        shutil.rmtree(tmp, ignore_errors=True)
    if not bare:
        return
    print(f"gateway / bare: {chain / bare:.2f}")
    if args.no_docs or args.without:
        return
    command = ".venv/bin/python bench/gateway_instructions.py " + shlex.join(sys.argv[1:])
    write_section(
        "Gateway instructions per request",
        "\n".join(
            [
                "User-space instructions per request under valgrind's callgrind, counted only "
                "while `wrk -t1 -c32` drives the server, for the authenticated GET of the "
                "Gateway section: repeatable where that section's timings are not (see the "
                "docstring of `bench/gateway_instructions.py`). The kernel's work for the "
                "sockets is not counted.",
                "",
                f"Command: `{command.strip()}`. Recorded {time.strftime('%Y-%m-%d %H:%M')}.",
                "",
                "| server | instructions per request |",
                "| --- | ---: |",
                f"| bare pure-ASGI aiohttp proxy | {bare:,} |",
                f"| gateway, full chain, 1 worker | {chain:,} |",
                "",
                f"The gateway runs {chain / bare:.2f}x the bare proxy's instructions.",
            ]
        ),
    )


if __name__ == "__main__":
    main()

"""Where the gateway's Python time goes, by function: cProfile under wrk.

    .venv/bin/python bench/gateway_profile.py --redis-url redis://127.0.0.1:6379/5

The gateway (`python -m gateway`, one worker, the whole chain of `bench/gateway.py`) runs
under cProfile while `wrk -t1 -c32` drives the authenticated GET of that benchmark; the
profile is written when it stops. Printed: each function's own time (tottime) as a share
of the whole, the top `--top`, then the shares summed by where the code lives (Keelson's
own modules, each dependency, the standard library). cProfile adds a fixed cost to every
Python call, so call-heavy code looks dearer than it is: read the shares to find where to
look, and `bench/gateway_instructions.py` (callgrind) to measure a change.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from gateway import (  # bench/gateway.py, beside this file
    PATH,
    gateway_config,
    nginx_config,
    spawn,
    stop,
    token,
    wait_ready,
    wrk,
)
from keelson.keys import SigningKey
from keelson_dev.embedded import free_port, wait_for_port


def where(filename: str) -> str:
    """Which body of code a function belongs to."""
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1].split("/", 1)[0]
    for own in ("libs/common/keelson/", "services/gateway/gateway/"):
        if own in filename:
            return own + filename.split(own, 1)[1]
    if filename.startswith("~") or "/lib/python3" in filename:
        return "stdlib and builtins"
    return filename


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=os.environ.get("KEELSON_REDIS_URL"))
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="keelson-bench-profile-"))
    os.chmod(tmp, 0o755)
    key = SigningKey.generate()
    (tmp / "jwks.json").write_text(json.dumps({"keys": [key.public_jwk()]}))
    os.chmod(tmp / "jwks.json", 0o644)
    upstream_port = free_port()
    headers = {"Authorization": f"Bearer {token(key)}"}
    nginx = spawn(["nginx", "-c", str(nginx_config(tmp, upstream_port, free_port()))], cpus=None)
    profile = tmp / "gateway.prof"
    try:
        wait_for_port(upstream_port, timeout=10)
        upstream = f"http://127.0.0.1:{upstream_port}"
        config = gateway_config(tmp / "gateway", upstream, args.redis_url)
        port = free_port()
        server = spawn(
            [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "gateway"],
            cpus=None,
            env={
                "KEELSON_CONFIG_DIR": str(config),
                "KEELSON_ENV": "prod",
                "KEELSON_PORT": str(port),
                "PYTHONHASHSEED": "0",
            },
            cwd=config,
        )
        try:
            url = f"http://127.0.0.1:{port}{PATH}"
            wait_ready(url, headers, timeout=120)
            _, count, bad = wrk(url, headers, 32, args.seconds)
        finally:
            # SIGINT: uvicorn raises it again once shut down, and cProfile writes its
            # file on the way out (SIGTERM would end the process before that).
            server.send_signal(signal.SIGINT)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                stop(server)
        stats = pstats.Stats(str(profile))
    finally:
        stop(nginx)
        shutil.rmtree(tmp, ignore_errors=True)
    entries = stats.stats  # type: ignore[attr-defined]  # pstats types no accessor for it
    total = sum(row[2] for row in entries.values())
    print(f"{count} requests ({bad} not 2xx); {total:.2f} s of profiled own time")
    rows = sorted(entries.items(), key=lambda item: item[1][2], reverse=True)
    for (filename, line, name), (_, calls, own, _cum, _) in rows[: args.top]:
        print(f"{own / total:6.1%}  {calls / count:6.1f}/req  {where(filename)}:{line} {name}")
    shares: dict[str, float] = defaultdict(float)
    for (filename, _, _), row in entries.items():
        shares[where(filename)] += row[2]
    print()
    for body, own in sorted(shares.items(), key=lambda item: item[1], reverse=True)[: args.top]:
        print(f"{own / total:6.1%}  {body}")


if __name__ == "__main__":
    main()

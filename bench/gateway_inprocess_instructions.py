"""The gateway app's own instructions per request, in-process, under callgrind.

    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/tmp/gw.%p \\
        .venv/bin/python bench/gateway_inprocess_instructions.py 1000 \\
        --redis-url redis://127.0.0.1:6379/5
    (the same with 3000; figure = (total(3000) - total(1000)) / 2000)

`bench/gateway_instructions.py` counts a whole server (granian and all) under load and
takes long; this drives `gateway.app.create_app` (the whole chain of `bench/gateway.py`,
the access log as JSON to /dev/null) in this process, one request after another, with N
authenticated GETs against nginx answering `{"ok":true}`. Start-up, warm-up and
shut-down are the same whatever N is, so the difference between two runs with different N,
divided by the difference in N, is the per-request cost of the app and the Python
libraries below it (the server's own part is not in it). Deterministic enough to measure
a change of a few hundred instructions; the statuses must all be 200.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from _gateway_rig import upstream_rig

from gateway import gateway_values, get_scope  # bench/gateway.py, beside this file
from keelson.auth import IdentityKey


async def drive(app: Any, bearer: bytes, requests: int) -> None:
    """A warm-up, then `requests` GETs through `app`, one after another."""
    headers = [(b"host", b"gateway"), (b"authorization", bearer), (b"accept", b"*/*")]
    statuses: set[int] = set()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.add(message["status"])

    async with app.router.lifespan_context(app):
        for _ in range(200):  # warm-up: caches and pools filled
            await app(get_scope(headers), receive, send)
        for _ in range(requests):
            await app(get_scope(headers), receive, send)
    if statuses != {200}:
        raise RuntimeError(f"unexpected statuses {sorted(statuses)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("requests", type=int)
    parser.add_argument("--redis-url", default=os.environ.get("KEELSON_REDIS_URL"))
    args = parser.parse_args()
    # This file's folder holds bench/gateway.py: it must leave sys.path before the gateway
    # package can be imported under its own name.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    del sys.modules["gateway"]
    from gateway.app import create_app
    from gateway.settings import Settings
    from keelson.config import LogSettings
    from keelson.logging import configure_logging

    identity = IdentityKey.generate()
    os.environ["KEELSON_IDENTITY__SIGNING_KEY"] = identity.secret_text()
    os.environ["KEELSON_IDENTITY__PUBLIC_KEYS"] = json.dumps(identity.public_keys)
    with upstream_rig("keelson-bench-inprocess-") as rig:
        values = gateway_values(rig.upstream, args.redis_url, "bench-inprocess")
        settings = Settings(**values, log=LogSettings(ship_endpoint=None, level="INFO"))
        configure_logging(settings)
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.setStream(open(os.devnull, "w"))  # noqa: SIM115
        bearer = rig.headers["Authorization"].encode()
        asyncio.run(drive(create_app(settings), bearer, args.requests))
    print(f"{args.requests} requests, all 200")


if __name__ == "__main__":
    main()

"""Instructions of three per-request pieces of the gateway's chain, alone, under callgrind.

    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/tmp/hp.%p \\
        .venv/bin/python bench/hot_path_instructions.py 2000
    (the same with 6000; figure = (total(6000) - total(2000)) / 4000)

`bench/gateway_inprocess_instructions.py` drives the whole chain against nginx and Redis,
and its count still holds wall-clock work (the rate limiter's linger and budget re-read,
the revocation re-check, the identity signature every 10 s, OpenAPI retries of the dead
upstreams), which moves by more from one run to the next than a change of a few hundred
instructions. This runs, N times each, with no network, no timer and nothing waited on:

- `ServiceMiddleware` around an app that binds a user id (as the security layer does) and
  answers 200, its access record written by keelson's console handler (JSON, /dev/null);
- the rate-limit layer's answer for an admitted hit: its three `RateLimit-*` headers
  (`RateLimitHeaders.for_hit`, as the layer formats them) added to the request's `Exchange`;
- nothing else: the difference between two N is these pieces' cost per request.

Run it for the trees under test (`PYTHONPATH` pointing at a `git archive` copy).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

# This file's folder holds bench/gateway.py: it must leave sys.path before the gateway
# package can be imported under its own name.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from gateway.plugins.rate_limiting import RateLimitHeaders  # noqa: E402
from keelson.http import Exchange, InFlight, ServiceMiddleware  # noqa: E402
from keelson.logging import ConsoleHandler, JsonFormatter, user_id_var  # noqa: E402


async def drive(requests: int) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        user_id_var.set("bench-user")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        return None

    middleware = ServiceMiddleware(app, service="gateway", tracker=InFlight())
    headers = [(b"host", b"gateway"), (b"accept", b"*/*")]

    def scope() -> dict[str, Any]:
        return {
            "type": "http",
            "http_version": "1.1",
            "method": "GET",
            "path": "/api/v1/auth/me",
            "raw_path": b"/api/v1/auth/me",
            "query_string": b"",
            "headers": headers,
            "client": ("127.0.0.1", 40000),
        }

    limit = RateLimitHeaders(100_000_000)
    reset_at = time.time() + 3600
    for _ in range(200):  # warm-up
        await middleware(scope(), receive, send)
        Exchange().add_headers(limit.for_hit(99, reset_at)[1])
    for i in range(requests):
        await middleware(scope(), receive, send)
        Exchange().add_headers(limit.for_hit(i, reset_at)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("requests", type=int)
    args = parser.parse_args()
    console = ConsoleHandler(open(os.devnull, "w"))  # noqa: SIM115
    console.setFormatter(JsonFormatter("gateway"))
    root = logging.getLogger()
    root.handlers[:] = [console]
    root.setLevel(logging.INFO)
    asyncio.run(drive(args.requests))
    print(f"{args.requests} requests")


if __name__ == "__main__":
    main()

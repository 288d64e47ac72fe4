"""Where the gateway's Python time goes, by function: cProfile of the app under load.

    .venv/bin/python bench/gateway_profile.py --redis-url redis://127.0.0.1:6379/5

The gateway's app (`gateway.app.create_app`, the whole chain of `bench/gateway.py`, the
access log as JSON to /dev/null) is driven in this process by `--connections` callers at
once, each sending the authenticated GET of that benchmark again as soon as it is answered,
against nginx as the upstream; cProfile records `--requests` of them after a warm-up.
In-process because the server the gateway ships on (granian) runs the app in a worker
process it starts itself, out of reach of `python -m cProfile`; what is left out is the
server's own part of a request (Rust, and its ASGI glue), which cProfile would not see anyway.

Printed: each function's own time (tottime) as a share of the whole, the top `--top`, then
the shares summed by where the code lives (Keelson's own modules, each dependency, the
standard library). cProfile adds a fixed cost to every Python call, so call-heavy code
looks dearer than it is: read the shares to find where to look, and
`bench/gateway_instructions.py` (callgrind) to measure a change.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
from collections import defaultdict
from typing import Any

from _gateway_rig import in_process_gateway

from gateway import get_scope  # bench/gateway.py, beside this file


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


async def profile(app: Any, bearer: bytes, requests: int, connections: int) -> cProfile.Profile:
    """`requests` GETs through `app`, `connections` at a time, profiled after a warm-up."""
    headers = [(b"host", b"gateway"), (b"authorization", bearer), (b"accept", b"*/*")]
    statuses: set[int] = set()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.add(message["status"])

    async def caller(count: int) -> None:
        for _ in range(count):
            await app(get_scope(headers), receive, send)

    async def load(count: int) -> None:
        await asyncio.gather(*(caller(count // connections) for _ in range(connections)))

    profiler = cProfile.Profile()
    async with app.router.lifespan_context(app):
        await load(max(connections, requests // 10))  # warm-up: caches and pools filled
        profiler.enable()
        await load(requests)
        profiler.disable()
    if statuses != {200}:
        raise RuntimeError(f"unexpected statuses {sorted(statuses)}")
    return profiler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=os.environ.get("KEELSON_REDIS_URL"))
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    with in_process_gateway("keelson-bench-profile-", args.redis_url) as (app, bearer):
        profiler = asyncio.run(profile(app, bearer, args.requests, args.connections))
    stats = pstats.Stats(profiler)
    count = args.requests // args.connections * args.connections
    entries = stats.stats  # type: ignore[attr-defined]  # pstats types no accessor for it
    total = sum(row[2] for row in entries.values())
    print(f"{count} requests; {total:.2f} s of profiled own time")
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

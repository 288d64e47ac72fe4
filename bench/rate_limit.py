"""CPU per counted hit of the gateway's rate_limiting layer, in process, under concurrency.

    .venv/bin/python bench/rate_limit.py --redis-url redis://127.0.0.1:6379/12

The plugin is built alone (no app, no HTTP server) and its ASGI layer wraps an endpoint
that answers 200 with an empty body. `--concurrency` hitters (32, like wrk -c32) call
the layer through `asyncio.gather`, each `--hits / --concurrency` times in a row, and the
figure is this process's CPU time (`time.process_time`, including the kernel's work for
the Redis socket) per request, minus the same loop around the bare endpoint. Scenarios:

- one key: every hitter is the same client (one user behind wrk), under a huge limit;
- 32 keys: each hitter is its own client (own IP), under a huge limit;
- one key, over its limit: the same client past a small limit, so every hit is refused
  (429 with its problem+json body).

Each runs with the in-process storage, then (with `--redis-url`) with Redis; the keys
live under a fresh prefix that is deleted afterwards. Prints only; docs/benchmarks.md is
not written.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

# bench/gateway.py sits beside this file: its folder must leave sys.path before the
# gateway package can be imported under its own name.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from redis.asyncio import Redis  # noqa: E402
from starlette.types import ASGIApp, Message, Receive, Scope, Send  # noqa: E402

from gateway.plugins.rate_limiting import RateLimitingPlugin  # noqa: E402
from gateway.settings import Settings  # noqa: E402
from keelson.config import LogSettings  # noqa: E402
from keelson.http import Exchange  # noqa: E402
from keelson.plugins import PluginContainer  # noqa: E402
from keelson_dev.embedded import free_port  # noqa: E402

HUGE = "100000000/minute"
SCENARIOS = (("one key", 1, HUGE), ("32 keys", 32, HUGE), ("one key, over its limit", 1, "5/hour"))


async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def receive() -> Message:
    return {"type": "http.request", "body": b""}


async def plugin_for(redis_url: str | None, limit: str, prefix: str) -> RateLimitingPlugin:
    settings = Settings(
        env="test",
        log=LogSettings(ship_endpoint=None),
        redis_url=redis_url,
        bus={
            "zmq_xsub_endpoint": f"tcp://127.0.0.1:{free_port()}",
            "zmq_xpub_endpoint": f"tcp://127.0.0.1:{free_port()}",
        },
        plugins={"rate_limiting": {"default": limit, "rules": [], "key_prefix": prefix}},
    )
    plugin = RateLimitingPlugin(PluginContainer(settings))
    await plugin.initialize()
    return plugin


async def cpu_per_request(app: ASGIApp, clients: int, hits: int, concurrency: int) -> float:
    statuses: dict[int, int] = {}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses[message["status"]] = statuses.get(message["status"], 0) + 1

    async def hitter(i: int, n: int) -> None:
        ip = f"10.0.{i % clients // 256}.{i % clients % 256}"
        for _ in range(n):
            scope = {
                "type": "http",
                "method": "GET",
                "path": "/api/v1/logs/bench",
                "headers": [],
                "client": (ip, 40000 + i),
                # What Keelson's ServiceMiddleware gives every request; the layer adds its
                # RateLimit-* headers there.
                "keelson.exchange": Exchange(),
            }
            await app(scope, receive, send)

    await asyncio.gather(*(hitter(i, 200 // concurrency + 1) for i in range(concurrency)))
    per = hits // concurrency
    started = time.process_time()
    await asyncio.gather(*(hitter(i, per) for i in range(concurrency)))
    return (time.process_time() - started) / (per * concurrency) * 1e6


async def run(args: argparse.Namespace) -> None:
    bare = min([await cpu_per_request(endpoint, 1, args.hits, args.concurrency) for _ in range(3)])
    print(f"bare endpoint: {bare:.1f} us CPU/request (subtracted below)")
    print(f"{'storage':<8} {'scenario':<26} {'us CPU/hit':>10}")
    for storage, url in (("memory", None), ("redis", args.redis_url)):
        if storage == "redis" and url is None:
            continue
        for label, clients, limit in SCENARIOS:
            prefix = f"bench-rl-{uuid.uuid4().hex[:8]}"
            plugin = await plugin_for(url, limit, prefix)
            try:
                app = plugin.wrap(endpoint)
                cpu = await cpu_per_request(app, clients, args.hits, args.concurrency)
                print(f"{storage:<8} {label:<26} {cpu - bare:10.1f}", flush=True)
            finally:
                if url is not None:
                    async with Redis.from_url(url) as client:
                        keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
                        if keys:
                            await client.delete(*keys)
                await plugin.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--hits", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(run(args))
    except ImportError:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()

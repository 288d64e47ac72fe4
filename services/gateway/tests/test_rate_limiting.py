import asyncio
import uuid
from pathlib import Path

import httpx
from gateway_testkit import (
    GatewayProcess,
    ServerThread,
    gateway_settings,
    private_bus,
    running_gateway,
    upstreams_config,
    write_config,
)

from gateway.plugins.rate_limiting import RateLimitingPlugin
from keelson.embedded import free_port


def limits(**extra: object) -> dict:
    return {
        "default": "100/minute",
        "rules": [{"path": "/api/v1/logs/echo", "methods": ["GET"], "limit": "3/minute"}],
        "key_prefix": f"test-{uuid.uuid4().hex[:8]}",
        **extra,
    }


async def test_route_limit_then_429_with_headers(upstream: ServerThread, redis_url: str) -> None:
    settings = gateway_settings(
        redis_url=redis_url,
        routing=upstreams_config(logs=upstream.url),
        rate_limiting=limits(),
    )
    async with running_gateway(settings) as (_, client):
        remaining = []
        for _ in range(3):
            response = await client.get("/api/v1/logs/echo")
            assert response.status_code == 200
            assert response.headers["ratelimit-limit"] == "3"
            assert 1 <= int(response.headers["ratelimit-reset"]) <= 60
            remaining.append(int(response.headers["ratelimit-remaining"]))
        assert remaining == [2, 1, 0]
        refused = await client.get("/api/v1/logs/echo")
        assert refused.status_code == 429
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["status"] == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.headers["ratelimit-remaining"] == "0"
        # Another route has its own budget; POST to the same path is not under the rule.
        other = await client.get("/api/v1/logs/items/1")
        assert other.status_code == 200 and other.headers["ratelimit-limit"] == "100"
        assert (await client.post("/api/v1/logs/echo", json={})).status_code == 200
        # Probes are never limited.
        assert "ratelimit-limit" not in (await client.get("/health/live")).headers
        metrics = (await client.get("/metrics")).text
        assert 'gateway_rate_limit_rejections_total{rule="/api/v1/logs/echo"} 1.0' in metrics


async def test_clients_are_keyed_by_forwarded_ip(upstream: ServerThread) -> None:
    settings = gateway_settings(
        trusted_proxy_hops=1,
        routing=upstreams_config(logs=upstream.url),
        rate_limiting=limits(storage="memory"),
    )
    async with running_gateway(settings) as (_, client):
        for _ in range(3):
            await client.get("/api/v1/logs/echo", headers={"X-Forwarded-For": "10.0.0.1"})
        a = await client.get("/api/v1/logs/echo", headers={"X-Forwarded-For": "10.0.0.1"})
        b = await client.get("/api/v1/logs/echo", headers={"X-Forwarded-For": "10.0.0.2"})
    assert (a.status_code, b.status_code) == (429, 200)


async def test_storage_down_fails_open_by_default_and_closed_when_asked(
    upstream: ServerThread,
) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    for fail_open, expected in ((True, 200), (False, 503)):
        settings = gateway_settings(
            redis_url=dead_redis,
            routing=upstreams_config(logs=upstream.url),
            rate_limiting=limits(fail_open=fail_open),
        )
        async with running_gateway(settings) as (_, client):
            response = await client.get("/api/v1/logs/echo")
            assert response.status_code == expected
            outcome = "allowed" if fail_open else "refused"
            metrics = (await client.get("/metrics")).text
            assert f'gateway_rate_limit_storage_errors_total{{outcome="{outcome}"}}' in metrics


def test_two_gateway_processes_share_one_budget(
    upstream: ServerThread, redis_url: str, tmp_path: Path
) -> None:
    config = {
        "log": {"ship_endpoint": None},
        "bus": private_bus(),
        "redis_url": redis_url,
        "plugins": {
            "security": {"enabled": False},
            "routing": upstreams_config(logs=upstream.url),
            "rate_limiting": limits(rules=[{"path": "/api/v1/logs/echo", "limit": "10/minute"}]),
        },
    }
    write_config(tmp_path, config)
    gateways = [GatewayProcess(tmp_path).launch(), GatewayProcess(tmp_path).launch()]
    try:
        for gateway in gateways:
            gateway.wait_ready()
        statuses = []
        for i in range(16):
            gateway = gateways[i % 2]
            statuses.append(httpx.get(gateway.url + "/api/v1/logs/echo", timeout=10).status_code)
    finally:
        for gateway in gateways:
            gateway.stop()
    assert statuses.count(200) == 10
    assert statuses.count(429) == 6
    assert statuses[:10] == [200] * 10


async def test_remaining_counts_down_between_reads_and_shows_other_replicas(
    upstream: ServerThread, redis_url: str
) -> None:
    config = limits(rules=[{"path": "/api/v1/logs/echo", "limit": "100/minute"}])
    first = gateway_settings(
        redis_url=redis_url,
        routing=upstreams_config(logs=upstream.url),
        rate_limiting={**config, "stats_refresh_seconds": 3600},
    )
    second = gateway_settings(
        redis_url=redis_url,
        routing=upstreams_config(logs=upstream.url),
        rate_limiting={**config, "stats_refresh_seconds": 0},
    )
    async with running_gateway(first) as (_, a), running_gateway(second) as (_, b):
        seen = [
            int((await a.get("/api/v1/logs/echo")).headers["ratelimit-remaining"]) for _ in range(5)
        ]
        assert seen == [99, 98, 97, 96, 95]
        # the other replica reads the shared count: both budgets are one
        assert (await b.get("/api/v1/logs/echo")).headers["ratelimit-remaining"] == "94"


async def test_concurrent_hits_share_round_trips_yet_count_exactly(
    upstream: ServerThread, redis_url: str
) -> None:
    settings = gateway_settings(
        redis_url=redis_url,
        routing=upstreams_config(logs=upstream.url),
        rate_limiting=limits(rules=[{"path": "/api/v1/logs/echo", "limit": "25/minute"}]),
    )
    async with running_gateway(settings) as (app, client):
        responses = await asyncio.gather(*(client.get("/api/v1/logs/echo") for _ in range(40)))
        statuses = [r.status_code for r in responses]
        assert statuses.count(200) == 25 and statuses.count(429) == 15
        # A Redis that forgot limits' Lua script (restart, SCRIPT FLUSH) is given it again.
        plugin = app.state.container.get(RateLimitingPlugin)
        await plugin.storage.bridge.get_connection().script_flush()
        other = await client.get("/api/v1/logs/items/1")
        assert other.status_code == 200 and other.headers["ratelimit-limit"] == "100"
        # Only redis-py is imported for the storage, not every client limits could use.
        assert set(plugin.storage.dependencies) == {"redis"}

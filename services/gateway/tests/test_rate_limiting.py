import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from gateway_testkit import (
    GatewayProcess,
    ServerThread,
    gateway_settings,
    private_bus,
    running_gateway,
    upstreams_config,
    write_config,
)
from gateway_upstream import TokenMint
from limits import parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from redis.asyncio import Redis

from gateway.metrics import RATE_LIMIT_OVERSHOOT, RATE_LIMIT_STORAGE_ERRORS
from gateway.plugins._rate_windows import Call, MemoryWindows
from gateway.plugins.rate_limiting import RateLimitHeaders, RateLimitingPlugin, _Tally
from gateway.settings import Settings
from keelson_dev.embedded import free_port
from keelson_dev.testing import counted, eventually


def test_the_headers_of_a_hit_say_the_limit_what_is_left_and_whole_seconds_to_the_reset() -> None:
    headers = RateLimitHeaders(600)
    now = time.time()
    seconds, sent = headers.for_hit(599, now + 41.2)
    assert seconds in (42, 41)  # 41 only if a second passed in between
    assert sent == (
        (b"ratelimit-limit", b"600"),
        (b"ratelimit-remaining", b"599"),
        (b"ratelimit-reset", b"%d" % seconds),
    )
    # later in the same window: another reset, formatted anew
    assert headers.for_hit(0, time.time() + 9.5)[1][1:] == (
        (b"ratelimit-remaining", b"0"),
        (b"ratelimit-reset", b"10"),
    )
    # a reset already due is said as 1 second, never 0 or less
    assert headers.for_hit(5, now - 30) == (
        1,
        ((b"ratelimit-limit", b"600"), (b"ratelimit-remaining", b"5"), (b"ratelimit-reset", b"1")),
    )


def limits(**extra: object) -> dict:
    return {
        "default": "100/minute",
        "rules": [{"path": "/api/v1/logs/echo", "methods": ["GET"], "limit": "3/minute"}],
        "key_prefix": f"test-{uuid.uuid4().hex[:8]}",
        **extra,
    }


def settings_for(upstream: ServerThread, **options: Any) -> Settings:
    """Gateway settings with the logs upstream routed; `options` as gateway_settings takes them."""
    return gateway_settings(routing=upstreams_config(logs=upstream.url), **options)


async def test_route_limit_then_429_with_headers(upstream: ServerThread, redis_url: str) -> None:
    settings = settings_for(upstream, redis_url=redis_url, rate_limiting=limits())
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


@pytest.mark.parametrize("storage", ["redis", "memory"])
async def test_the_moving_window_strategy_counts_through_limits(
    upstream: ServerThread, redis_url: str, storage: str
) -> None:
    config = limits(strategy="moving-window", storage=storage)
    settings = settings_for(upstream, redis_url=redis_url, rate_limiting=config)
    async with running_gateway(settings) as (app, client):
        remaining = []
        for _ in range(3):
            response = await client.get("/api/v1/logs/echo")
            assert response.status_code == 200
            remaining.append(int(response.headers["ratelimit-remaining"]))
        assert remaining == [2, 1, 0]
        refused = await client.get("/api/v1/logs/echo")
        assert refused.status_code == 429 and refused.headers["ratelimit-remaining"] == "0"
        health = await app.state.container.get(RateLimitingPlugin).health()
        assert health.ok and health.detail.startswith(f"{storage} storage reachable")


async def test_clients_are_keyed_by_forwarded_ip(upstream: ServerThread) -> None:
    settings = settings_for(upstream, trusted_proxy_hops=1, rate_limiting=limits(storage="memory"))
    async with running_gateway(settings) as (_, client):
        for _ in range(3):
            await client.get("/api/v1/logs/echo", headers={"X-Forwarded-For": "10.0.0.1"})
        a = await client.get("/api/v1/logs/echo", headers={"X-Forwarded-For": "10.0.0.1"})
        b = await client.get("/api/v1/logs/echo", headers={"X-Forwarded-For": "10.0.0.2"})
    assert (a.status_code, b.status_code) == (429, 200)


@pytest.mark.parametrize(
    ("trusted", "believed"),
    [(["127.0.0.1"], True), (["10.9.9.9/32"], False)],
    ids=["edge", "other"],
)
async def test_forwarded_ips_are_believed_from_trusted_proxies_only(
    upstream: ServerThread, trusted: list[str], believed: bool
) -> None:
    """With `trusted_proxies` set, X-Forwarded-For keys the client only when the socket
    peer (here 127.0.0.1) is one of them; from any other peer, the peer is the client and
    every forwarded address shares its budget."""
    settings = settings_for(upstream, trusted_proxy_hops=1, rate_limiting=limits(storage="memory"))
    settings = settings.model_copy(update={"trusted_proxies": trusted})
    async with running_gateway(settings) as (_, client):
        for _ in range(3):
            await client.get("/api/v1/logs/echo", headers={"X-Forwarded-For": "10.0.0.1"})
        other = await client.get("/api/v1/logs/echo", headers={"X-Forwarded-For": "10.0.0.2"})
    assert other.status_code == (200 if believed else 429)


async def test_storage_down_fails_open_by_default_and_closed_when_asked(
    upstream: ServerThread,
) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    for fail_open, expected in ((True, 200), (False, 503)):
        settings = settings_for(
            upstream, redis_url=dead_redis, rate_limiting=limits(fail_open=fail_open)
        )
        async with running_gateway(settings) as (_, client):
            response = await client.get("/api/v1/logs/echo")
            assert response.status_code == expected
            outcome = "allowed" if fail_open else "refused"
            metrics = (await client.get("/metrics")).text
            assert f'gateway_rate_limit_storage_errors_total{{outcome="{outcome}"}}' in metrics


def gateway_pair(
    tmp_path: Path, upstream: ServerThread, redis_url: str, limit: str
) -> list[GatewayProcess]:
    """Two `python -m gateway` processes on one Redis, one rule on /api/v1/logs/echo; ready."""
    config = {
        "log": {"ship_endpoint": None},
        "bus": private_bus(),
        "redis_url": redis_url,
        "plugins": {
            "security": {"enabled": False},
            "routing": upstreams_config(logs=upstream.url),
            "rate_limiting": limits(rules=[{"path": "/api/v1/logs/echo", "limit": limit}]),
        },
    }
    write_config(tmp_path, config)
    gateways = [GatewayProcess(tmp_path).launch(), GatewayProcess(tmp_path).launch()]
    try:
        for gateway in gateways:
            gateway.wait_ready()
    except Exception:
        for gateway in gateways:
            gateway.stop()
        raise
    return gateways


def test_two_gateway_processes_share_one_budget(
    upstream: ServerThread, redis_url: str, tmp_path: Path
) -> None:
    gateways = gateway_pair(tmp_path, upstream, redis_url, "10/minute")
    try:
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


async def test_two_gateway_processes_under_concurrent_hits_share_one_budget(
    upstream: ServerThread, redis_url: str, tmp_path: Path
) -> None:
    gateways = gateway_pair(tmp_path, upstream, redis_url, "25/minute")
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            responses = await asyncio.gather(
                *(client.get(gateways[i % 2].url + "/api/v1/logs/echo") for i in range(64))
            )
    finally:
        for gateway in gateways:
            gateway.stop()
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 25 and statuses.count(429) == 39


async def test_remaining_counts_down_between_reads_and_shows_other_replicas(
    upstream: ServerThread, redis_url: str
) -> None:
    config = limits(rules=[{"path": "/api/v1/logs/echo", "limit": "100/minute"}])
    # Every hit waits for the store here (none admitted ahead of it), so the other replica's
    # read below sees them all at once.
    first = settings_for(
        upstream,
        redis_url=redis_url,
        rate_limiting={**config, "stats_refresh_seconds": 3600, "admit_ahead_above": 1000},
    )
    second = settings_for(
        upstream, redis_url=redis_url, rate_limiting={**config, "stats_refresh_seconds": 0}
    )
    async with running_gateway(first) as (_, a), running_gateway(second) as (_, b):
        seen = [
            int((await a.get("/api/v1/logs/echo")).headers["ratelimit-remaining"]) for _ in range(5)
        ]
        assert seen == [99, 98, 97, 96, 95]
        # the other replica reads the shared count: both budgets are one
        assert (await b.get("/api/v1/logs/echo")).headers["ratelimit-remaining"] == "94"


ECHO = "/api/v1/logs/echo"


@contextlib.asynccontextmanager
async def writes_paused(redis_url: str) -> AsyncIterator[Redis]:
    """Redis takes no write (nor script) from anyone while inside; reads still answer."""
    store = Redis.from_url(redis_url)
    await store.execute_command("CLIENT", "PAUSE", 30_000, "WRITE")
    try:
        yield store
    finally:
        await store.execute_command("CLIENT", "UNPAUSE")
        await store.aclose()


def ahead(upstream: ServerThread, redis_url: str, limit: str, **extra: object) -> Settings:
    """Gateway settings with one rule on ECHO whose hits are admitted ahead of the store
    while far from the limit."""
    config = limits(rules=[{"path": ECHO, "limit": limit}], stats_refresh_seconds=3600, **extra)
    return settings_for(upstream, redis_url=redis_url, rate_limiting=config)


def only_tally(app: FastAPI) -> _Tally:
    """The one client's tally under the one rule."""
    (tally,) = app.state.container.get(RateLimitingPlugin).rules.rules[0].tallies.values()
    return tally


async def test_hits_far_from_the_limit_are_admitted_ahead_of_the_store(
    upstream: ServerThread, redis_url: str
) -> None:
    settings = ahead(upstream, redis_url, "1000/minute", storage_timeout_seconds=30)
    async with running_gateway(settings) as (app, client):
        first = await client.get(ECHO)  # the client's first hit waits, and its window is read
        assert first.headers["ratelimit-remaining"] == "999"
        current = only_tally(app).window_keys[1]
        async with writes_paused(redis_url) as store:
            # Redis runs no script now: a hit that waited for it would not be answered.
            response = await client.get(ECHO)
            assert response.status_code == 200
            assert response.headers["ratelimit-remaining"] == "998"
            assert int(await store.get(current)) == 1
        async with Redis.from_url(redis_url) as store:
            # ...and once Redis takes scripts again, the hit is counted there.
            await eventually(lambda: _count_is(store, current, 2))


async def _count_is(store: Redis, key: str, count: int) -> bool:
    return int(await store.get(key) or 0) == count


async def test_a_hit_admitted_ahead_that_the_store_refuses_is_counted_and_the_next_waits(
    upstream: ServerThread, redis_url: str
) -> None:
    settings = ahead(upstream, redis_url, "100/minute", admit_ahead_above=10)
    async with running_gateway(settings) as (app, client):
        assert (await client.get(ECHO)).headers["ratelimit-remaining"] == "99"
        tally = only_tally(app)
        before = counted(RATE_LIMIT_OVERSHOOT, ECHO)
        async with Redis.from_url(redis_url) as store:
            # Another replica spends the rest of the budget (the window as limits keeps it).
            await store.set(tally.window_keys[1], 100, px=120_000)
        response = await client.get(ECHO)  # admitted on the 98 it believes are left
        assert response.status_code == 200 and response.headers["ratelimit-remaining"] == "98"
        await eventually(lambda: counted(RATE_LIMIT_OVERSHOOT, ECHO) == before + 1)
        refused = await client.get(ECHO)  # this one waits for the store, which refuses it
        assert refused.status_code == 429 and refused.headers["ratelimit-remaining"] == "0"


async def test_a_store_failing_hits_admitted_ahead_makes_the_next_hits_wait(
    upstream: ServerThread, redis_url: str
) -> None:
    settings = ahead(
        upstream, redis_url, "1000/minute", fail_open=False, storage_timeout_seconds=0.2
    )
    async with running_gateway(settings) as (_, client):
        assert (await client.get(ECHO)).status_code == 200
        before = counted(RATE_LIMIT_STORAGE_ERRORS, "allowed")
        async with writes_paused(redis_url):
            assert (await client.get(ECHO)).status_code == 200  # admitted ahead
            # Its hit times out in the store: counted as allowed, since it was.
            await eventually(lambda: counted(RATE_LIMIT_STORAGE_ERRORS, "allowed") == before + 1)
            # From now on hits wait for the store, and this gateway fails closed.
            refused = await client.get(ECHO)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"


async def test_concurrent_hits_share_round_trips_yet_count_exactly(
    upstream: ServerThread, redis_url: str
) -> None:
    settings = settings_for(
        upstream,
        redis_url=redis_url,
        rate_limiting=limits(rules=[{"path": "/api/v1/logs/echo", "limit": "25/minute"}]),
    )
    async with running_gateway(settings) as (_, client):
        responses = await asyncio.gather(*(client.get("/api/v1/logs/echo") for _ in range(40)))
        statuses = [r.status_code for r in responses]
        assert statuses.count(200) == 25 and statuses.count(429) == 15
        # A Redis that forgot the Lua script (restart, SCRIPT FLUSH) is given it again.
        async with Redis.from_url(redis_url) as store:
            await store.script_flush()
        other = await client.get("/api/v1/logs/items/1")
        assert other.status_code == 200 and other.headers["ratelimit-limit"] == "100"


async def test_concurrent_hits_in_memory_count_exactly(upstream: ServerThread) -> None:
    settings = settings_for(
        upstream,
        rate_limiting=limits(
            storage="memory", rules=[{"path": "/api/v1/logs/echo", "limit": "25/minute"}]
        ),
    )
    async with running_gateway(settings) as (_, client):
        responses = await asyncio.gather(*(client.get("/api/v1/logs/echo") for _ in range(40)))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 25 and statuses.count(429) == 15
    assert sorted(int(r.headers["ratelimit-remaining"]) for r in responses)[-1] == 24


async def test_memory_hits_answer_as_limits_own_memory_storage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1_700_000_000.25]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    item = parse("5/second")  # short windows: the walk below crosses many of them
    ours = MemoryWindows()
    theirs = SlidingWindowCounterRateLimiter(MemoryStorage())
    seen = set()
    for step in range(400):
        clock[0] += (0.01, 0.05, 0.13, 0.31, 0.002)[step % 5]
        got = ours.hit_now(item.key_for("rule", "c"), item.amount, item.get_expiry())
        allowed = await theirs.hit(item, "rule", "c")
        stats = await theirs.get_window_stats(item, "rule", "c")
        assert got == (allowed, stats.remaining, stats.reset_time), step
        seen.add(allowed)
    assert seen == {True, False}
    clock[0] += 60  # an idle minute: every counter expired, and the sweep drops them
    ours.hit_now(item.key_for("rule", "other"), item.amount, item.get_expiry())
    assert set(ours.counts) == {f"{item.key_for('rule', 'other')}/{int(clock[0])}"}


async def test_one_keys_hits_in_a_batch_share_one_call_and_fall_back_in_order(
    upstream: ServerThread, redis_url: str
) -> None:
    settings = settings_for(upstream, redis_url=redis_url, rate_limiting=limits())
    async with running_gateway(settings) as (app, _):
        hits = app.state.container.get(RateLimitingPlugin)._hits
        sent: list[list[Call]] = []
        send = hits._send

        async def recording(calls: list[Call]) -> list[Any]:
            sent.append(calls)
            return await send(calls)

        hits._send = recording
        busy, quiet = hits.window_keys("busy"), hits.window_keys("quiet")

        async def hit(keys: tuple[str, str]) -> bool:
            allowed, _ = await hits.hit(keys, 25, 60)
            return allowed

        # 10 fit: one call with amount=10.
        assert await asyncio.gather(*(hit(busy) for _ in range(10))) == [True] * 10
        assert sent == [[(busy, 25, 60, 10)]]
        # 20 more do not all fit: one call per hit, in arrival order, the first 15 allowed;
        # the quiet key in the same batch still gets its 3 in one call.
        sent.clear()
        answers = await asyncio.gather(*(hit(k) for k in [busy] * 10 + [quiet] * 3 + [busy] * 10))
        assert answers == [True] * 13 + [True] * 5 + [False] * 5
        assert sent[0] == [(busy, 25, 60, 20), (quiet, 25, 60, 3)]
        assert sent[1] == [(busy, 25, 60, 1)] * 20
        # Refused lately: one call per hit straight away.
        sent.clear()
        assert await asyncio.gather(*(hit(busy) for _ in range(4))) == [False] * 4
        assert sent == [[(busy, 25, 60, 1)] * 4]
        # Each hit is answered with its window as its call left it: the current counts.
        answers = await asyncio.gather(*(hits.hit(k, 25, 60) for k in [quiet] * 2 + [busy]))
        assert [(allowed, window[2]) for allowed, window in answers] == [
            (True, 5),
            (True, 5),
            (False, 25),
        ]


async def test_hits_in_a_round_trip_that_is_cancelled_get_the_storage_error(
    upstream: ServerThread, redis_url: str
) -> None:
    settings = settings_for(
        upstream, redis_url=redis_url, rate_limiting=limits(storage_timeout_seconds=30)
    )
    async with running_gateway(settings) as (app, _):
        hits = app.state.container.get(RateLimitingPlugin)._hits
        keys = hits.window_keys("cancelled")
        async with writes_paused(redis_url):
            waiting = asyncio.create_task(hits.hit(keys, 25, 60))
            # Taken off the queue into a round trip that Redis holds up.
            await eventually(lambda: hits.sender is not None and not hits.queue)
            sender = hits.sender
            # As at shutdown. On Python 3.11, redis-py's asyncio.wait_for around a socket
            # write swallows a cancel that lands as the write completes (CPython
            # gh-86296, fixed in 3.12), and the round trip then runs on: cancel again
            # until the sender has stopped, as the event loop's own shutdown would not.
            while not sender.done():
                sender.cancel()
                await asyncio.wait({sender}, timeout=0.1)
            with pytest.raises(StorageError):
                await asyncio.wait_for(waiting, 10)


@pytest.mark.parametrize(("per", "fresh_budget"), [("address", False), ("caller", True)])
async def test_login_like_rules_count_by_address_whatever_token_is_sent(
    upstream: ServerThread,
    auth_upstream: ServerThread,
    mint: TokenMint,
    per: str,
    fresh_budget: bool,
) -> None:
    rule = {"path": "/api/v1/logs/echo", "methods": ["GET"], "limit": "3/minute", "per": per}
    settings = gateway_settings(
        routing=upstreams_config(logs=upstream.url, auth=auth_upstream.url),
        security={"default_policy": "public"},
        rate_limiting=limits(storage="memory", rules=[rule]),
    )
    async with running_gateway(settings) as (_, client):
        for _ in range(3):
            assert (await client.get("/api/v1/logs/echo")).status_code == 200
        # A signed-in caller from the same address: a budget of its own only per caller.
        someone = {"Authorization": f"Bearer {mint.mint(roles=('user',))}"}
        answer = await client.get("/api/v1/logs/echo", headers=someone)
    assert (answer.status_code == 200) is fresh_budget


def test_the_token_endpoint_is_limited_like_login() -> None:
    from gateway.plugins.rate_limiting import RateLimitConfig

    rules = {rule.path: rule for rule in RateLimitConfig().rules}
    assert rules["/api/v1/auth/token"].limit == rules["/api/v1/auth/login"].limit
    for path in ("/api/v1/auth/login", "/api/v1/auth/token", "/api/v1/auth/register"):
        assert rules[path].per == "address"

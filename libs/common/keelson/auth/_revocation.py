"""Revoked access-token ids, shared by every replica until the tokens would expire anyway."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from keelson.errors import ServiceUnavailable

if TYPE_CHECKING:
    from keelson.bus import Bus

__all__ = ["REVOCATIONS_CHANNEL", "RevocationList"]

REVOCATIONS_CHANNEL = "auth.revocations"
_log = logging.getLogger("keelson.auth")
_WARN_EVERY = 60.0  # seconds between "Redis is unavailable" warnings

Announce = Callable[[str, dict[str, Any]], Awaitable[None]]


class RevocationList:
    """`revoke(jti, exp)` and `is_revoked(jti)`.

    With Redis every replica reads the same keys (`SET ... EX` until the token's own
    expiry), so a revocation holds everywhere as soon as `revoke` returns; `revoke` raises
    `ServiceUnavailable` (503) and remembers nothing when Redis cannot store it, so a
    revocation is never reported done, nor half done, while only this process knows it.

    Each process also keeps a mirror of every current revocation: loaded by `sync` (at
    start and whenever Redis answers again after failing) and kept current by the
    announcements on the bus. While Redis is away `is_revoked` answers from that mirror,
    which is complete (no revocation can be stored during the outage); a process that has
    never synced cannot know, and refuses with 503 rather than accept a revoked token.
    Without Redis the list is in-process only.
    """

    def __init__(
        self,
        redis: Redis | None = None,
        *,
        prefix: str = "keelson:auth:revoked:",
        announce: Announce | None = None,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.announce = announce
        self._local: dict[str, float] = {}
        self._prune_at = 1024
        self._warned_at = -math.inf
        self.synced = redis is None  # the mirror holds every current revocation
        self._resync = False
        self._syncing: asyncio.Task[bool] | None = None

    @classmethod
    def on_bus(
        cls, redis: Redis | None, bus: Bus | None, *, announce: bool = False
    ) -> RevocationList:
        """A list that remembers what is announced on `bus`; with `announce`, announces too.

        Only the service that revokes (auth) announces; the others listen, and so know a
        revocation without a Redis round trip.
        """
        revocations = cls(redis, announce=bus.broadcast if bus is not None and announce else None)
        if bus is not None:
            bus.on_broadcast(REVOCATIONS_CHANNEL, revocations.on_announcement)
        return revocations

    async def revoke(self, jti: str, exp: float) -> None:
        """Refuse `jti` until `exp` (epoch seconds); past that the token is dead anyway."""
        ttl = int(exp - time.time()) + 1
        if ttl <= 0:
            return
        if self.redis is not None:
            try:
                await self.redis.set(self.prefix + jti, b"1", ex=ttl)
            except RedisError:
                _log.error("cannot store the revocation of %s: Redis is unavailable", jti)
                self._resync = True
                raise ServiceUnavailable("revocation store unavailable", retry_after=5) from None
        self.remember(jti, exp)
        if self.announce is not None:
            try:
                await self.announce(REVOCATIONS_CHANNEL, {"jti": jti, "exp": exp})
            except Exception:
                # Redis already holds the revocation; the announcement only saves replicas
                # a round trip, so its failure must not fail the logout.
                _log.warning("could not announce the revocation of %s", jti, exc_info=True)

    def revoked_here(self, jti: str) -> bool:
        """Whether this process knows `jti` is revoked (it revoked it or heard it announced),
        without asking Redis."""
        exp = self._local.get(jti)
        if exp is None:
            return False
        if exp > time.time():
            return True
        del self._local[jti]
        return False

    async def is_revoked(self, jti: str) -> bool:
        if self.revoked_here(jti):
            return True
        if self.redis is None:
            return False
        try:
            revoked = bool(await self.redis.exists(self.prefix + jti))
        except RedisError:
            self._resync = True
            if not self.synced:
                raise ServiceUnavailable("revocation list unavailable", retry_after=5) from None
            now = time.monotonic()
            if now - self._warned_at > _WARN_EVERY:
                self._warned_at = now
                _log.warning("Redis is unavailable: answering from the revocations mirrored")
            return False
        if self._resync and self._syncing is None:
            # Redis is back: announcements may have been missed while it was away.
            self._syncing = asyncio.create_task(self._sync_in_background(), name="revocations-sync")
        return revoked

    async def sync(self) -> bool:
        """Load every current revocation from Redis into the mirror; False if Redis fails."""
        if self.redis is None:
            return True
        now = time.time()
        try:
            keys = [key async for key in self.redis.scan_iter(match=self.prefix + "*", count=1000)]
            ttls: list[int] = []
            for start in range(0, len(keys), 1000):
                async with self.redis.pipeline(transaction=False) as pipe:
                    for key in keys[start : start + 1000]:
                        pipe.pttl(key)
                    ttls += await pipe.execute()
        except RedisError:
            self._resync = True
            return False
        for key, ttl in zip(keys, ttls, strict=True):
            if ttl > 0:
                name = key.decode() if isinstance(key, bytes) else str(key)
                self.remember(name.removeprefix(self.prefix), now + ttl / 1000)
        self.synced, self._resync = True, False
        return True

    async def _sync_in_background(self) -> bool:
        try:
            return await self.sync()
        finally:
            self._syncing = None

    def remember(self, jti: str, exp: float) -> None:
        """Record a revocation locally (own or announced by another replica)."""
        now = time.time()
        if len(self._local) >= self._prune_at:
            self._local = {k: v for k, v in self._local.items() if v > now}
            self._prune_at = max(1024, 2 * len(self._local))
        if exp > now:
            self._local[jti] = exp

    async def on_announcement(self, payload: Mapping[str, Any]) -> None:
        """Bus broadcast handler for `auth.revocations`."""
        jti, exp = payload.get("jti"), payload.get("exp")
        if isinstance(jti, str) and isinstance(exp, int | float):
            self.remember(jti, float(exp))

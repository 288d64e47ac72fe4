"""Revoked access-token ids, shared by every replica until the tokens would expire anyway."""

from __future__ import annotations

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
    expiry), so a revocation holds everywhere as soon as `revoke` returns. Revocations
    announced on the bus are also remembered locally, which answers without a round trip.
    While Redis is away `is_revoked` answers from that local set alone (and says so in
    the log) rather than failing every request, and `revoke` raises `ServiceUnavailable`
    (503): a revocation that only this process knows must not be reported as done.
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
        self.remember(jti, exp)
        if self.redis is not None:
            try:
                await self.redis.set(self.prefix + jti, b"1", ex=ttl)
            except RedisError:
                _log.error("cannot store the revocation of %s: Redis is unavailable", jti)
                raise ServiceUnavailable("revocation store unavailable", retry_after=5) from None
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
            return bool(await self.redis.exists(self.prefix + jti))
        except RedisError:
            now = time.monotonic()
            if now - self._warned_at > _WARN_EVERY:
                self._warned_at = now
                _log.warning("Redis is unavailable: revocations known to this process only")
            return False

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

"""Revoked access-token ids, shared by every replica until the tokens would expire anyway."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from redis.asyncio import Redis

__all__ = ["REVOCATIONS_CHANNEL", "RevocationList"]

REVOCATIONS_CHANNEL = "auth.revocations"
_log = logging.getLogger("keelson.auth")

Announce = Callable[[str, dict[str, Any]], Awaitable[None]]


class RevocationList:
    """`revoke(jti, exp)` and `is_revoked(jti)`.

    With Redis every replica reads the same keys (`SET ... EX` until the token's own
    expiry), so a revocation holds everywhere as soon as `revoke` returns. Revocations
    announced on the bus are also remembered locally, which answers without a round trip
    and keeps working while Redis is away. Without Redis the list is in-process only.
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

    async def revoke(self, jti: str, exp: float) -> None:
        """Refuse `jti` until `exp` (epoch seconds); past that the token is dead anyway."""
        ttl = int(exp - time.time()) + 1
        if ttl <= 0:
            return
        self.remember(jti, exp)
        if self.redis is not None:
            await self.redis.set(self.prefix + jti, b"1", ex=ttl)
        if self.announce is not None:
            try:
                await self.announce(REVOCATIONS_CHANNEL, {"jti": jti, "exp": exp})
            except Exception:
                # Redis already holds the revocation; the announcement only saves replicas
                # a round trip, so its failure must not fail the logout.
                _log.warning("could not announce the revocation of %s", jti, exc_info=True)

    async def is_revoked(self, jti: str) -> bool:
        exp = self._local.get(jti)
        if exp is not None:
            if exp > time.time():
                return True
            del self._local[jti]
        if self.redis is None:
            return False
        return bool(await self.redis.exists(self.prefix + jti))

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

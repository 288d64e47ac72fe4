"""Where verification keys come from: a JWKS document fetched over HTTP, or a fixed set."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import httpx
from jose import jwk
from jose.exceptions import JWKError

__all__ = ["ALGORITHM", "JwksClient", "KeySource", "StaticKeys", "parse_jwks"]

ALGORITHM = "ES256"
_log = logging.getLogger("keelson.auth")


class KeySource(Protocol):
    """Finds the public key for a `kid`; None when no such key is known."""

    async def get(self, kid: str) -> Any | None: ...


def parse_jwks(document: Mapping[str, Any]) -> dict[str, Any]:
    """`{kid: key}` for the usable ES256 keys of a JWKS document; others are skipped."""
    keys: dict[str, Any] = {}
    for entry in document.get("keys", ()):
        if not isinstance(entry, Mapping):
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or entry.get("kty") != "EC":
            continue
        if entry.get("alg", ALGORITHM) != ALGORITHM or entry.get("use", "sig") != "sig":
            continue
        try:
            keys[kid] = jwk.construct(dict(entry), ALGORITHM)
        except (JWKError, ValueError, TypeError):
            _log.warning("skipping malformed JWK %s", kid)
    return keys


class StaticKeys:
    """A fixed set of public JWKs (tests, benchmarks, or a service that signs itself)."""

    def __init__(self, jwks: Iterable[Mapping[str, Any]]) -> None:
        self._keys = parse_jwks({"keys": list(jwks)})

    async def get(self, kid: str) -> Any | None:
        return self._keys.get(kid)


class JwksClient:
    """The auth service's JWKS, cached; refetched when stale or when a `kid` is unknown.

    A token signed with a key this cache has not seen (auth rotated, or published its
    first key after this service fetched) triggers one refetch at once, shared by every
    request that waits on it. Refetches are at most one per `min_refresh_interval`, so a
    stream of tokens with made-up `kid`s costs the auth service one request per interval.
    When a refetch fails the keys already known keep working.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        url: str,
        *,
        min_refresh_interval: float = 1.0,
        max_age: float = 600.0,
    ) -> None:
        self.http = http
        self.url = url
        self.min_refresh_interval = min_refresh_interval
        self.max_age = max_age
        self.fetches = 0
        self._keys: dict[str, Any] = {}
        self._fetched_at = -math.inf
        self._attempted_at = -math.inf
        self._lock = asyncio.Lock()

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    async def get(self, kid: str) -> Any | None:
        key = self._keys.get(kid)
        if key is not None and not self._stale():
            return key
        if key is None and not self._may_refresh():
            return None
        async with self._lock:
            # Another task may have refreshed while this one waited for the lock.
            if (kid not in self._keys and self._may_refresh()) or self._stale():
                await self.refresh()
        return self._keys.get(kid)

    async def ensure_keys(self) -> bool:
        """True when keys are known, fetching them first if none are and a fetch is due."""
        if not self._keys and self._may_refresh():
            async with self._lock:
                if not self._keys and self._may_refresh():
                    await self.refresh()
        return bool(self._keys)

    async def refresh(self) -> bool:
        """Fetch the document now; False (keys unchanged) if the fetch fails."""
        self._attempted_at = time.monotonic()
        self.fetches += 1
        try:
            response = await self.http.get(self.url, headers={"Accept": "application/json"})
            response.raise_for_status()
            keys = parse_jwks(response.json())
        except (httpx.HTTPError, ValueError) as exc:
            _log.warning("cannot fetch JWKS from %s: %s", self.url, exc)
            return False
        self._keys = keys
        self._fetched_at = time.monotonic()
        return True

    def _stale(self) -> bool:
        now = time.monotonic()
        return now - self._fetched_at > self.max_age and self._may_refresh(now)

    def _may_refresh(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return now - self._attempted_at >= self.min_refresh_interval

"""End-to-end encryption sessions: their keys and used counters, in Redis or in memory."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from redis.asyncio import Redis

__all__ = ["MemorySessions", "RedisSessions", "SecureSession", "SessionStore"]

# Counters may arrive out of order (concurrent requests); up to this many behind the
# highest one seen are still accepted once each.
REPLAY_WINDOW = 1024


@dataclass(frozen=True)
class SecureSession:
    session_id: str
    to_gateway: bytes
    to_client: bytes


class SessionStore(Protocol):
    async def create(self, session: SecureSession, ttl: int) -> None: ...

    async def get(self, session_id: str) -> SecureSession | None:
        """None when unknown or expired."""

    async def use_counter(self, session_id: str, seq: int) -> bool:
        """Record `seq` as used; False when it was used before or is too far behind."""

    async def close(self) -> None: ...


@dataclass
class _Entry:
    session: SecureSession
    expires_at: float
    highest: int = 0
    used: set[int] = field(default_factory=set)


class MemorySessions:
    """This process only: fine for one gateway, not for replicas behind a load balancer."""

    def __init__(self, max_sessions: int = 100_000) -> None:
        self._entries: dict[str, _Entry] = {}
        self.max_sessions = max_sessions

    async def create(self, session: SecureSession, ttl: int) -> None:
        now = time.monotonic()
        if len(self._entries) >= self.max_sessions:
            self._entries = {k: e for k, e in self._entries.items() if e.expires_at > now}
            while len(self._entries) >= self.max_sessions:
                self._entries.pop(next(iter(self._entries)))
        self._entries[session.session_id] = _Entry(session, now + ttl)

    async def get(self, session_id: str) -> SecureSession | None:
        entry = self._entries.get(session_id)
        if entry is None:
            return None
        if entry.expires_at <= time.monotonic():
            del self._entries[session_id]
            return None
        return entry.session

    async def use_counter(self, session_id: str, seq: int) -> bool:
        entry = self._entries.get(session_id)
        if entry is None or seq <= entry.highest - REPLAY_WINDOW or seq in entry.used:
            return False
        entry.used.add(seq)
        if seq > entry.highest:
            entry.highest = seq
            floor = seq - REPLAY_WINDOW
            if len(entry.used) > 2 * REPLAY_WINDOW:
                entry.used = {s for s in entry.used if s > floor}
        return True

    async def close(self) -> None:
        self._entries.clear()


# Atomic check-and-record, so two replicas cannot both accept the same counter.
_USE_COUNTER = """
local highest = tonumber(redis.call('HGET', KEYS[1], 'highest') or '0')
local seq = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 0 or seq <= highest - window then return 0 end
if redis.call('ZADD', KEYS[2], 'NX', seq, ARGV[1]) == 0 then return 0 end
if seq > highest then
  redis.call('HSET', KEYS[1], 'highest', seq)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', seq - window)
end
redis.call('PEXPIRE', KEYS[2], redis.call('PTTL', KEYS[1]))
return 1
"""


class RedisSessions:
    """Shared by every gateway replica; a session expires with its Redis keys."""

    def __init__(self, redis: Redis, *, prefix: str = "keelson:gateway:e2e:") -> None:
        self.redis = redis
        self.prefix = prefix
        self._use_counter = redis.register_script(_USE_COUNTER)

    async def create(self, session: SecureSession, ttl: int) -> None:
        key = self.prefix + session.session_id
        # One MULTI: an interrupted create must not leave keys that never expire.
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                key, mapping={"to_gateway": session.to_gateway, "to_client": session.to_client}
            )
            pipe.expire(key, ttl)
            await pipe.execute()

    async def get(self, session_id: str) -> SecureSession | None:
        to_gateway, to_client = await self.redis.hmget(
            self.prefix + session_id, ["to_gateway", "to_client"]
        )
        if not isinstance(to_gateway, bytes) or not isinstance(to_client, bytes):
            return None
        return SecureSession(session_id, to_gateway, to_client)

    async def use_counter(self, session_id: str, seq: int) -> bool:
        key = self.prefix + session_id
        used = await self._use_counter(keys=[key, key + ":used"], args=[seq, REPLAY_WINDOW])
        return bool(used)

    async def close(self) -> None:
        """The Redis connection belongs to the redis plugin."""

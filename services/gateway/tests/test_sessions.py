import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from gateway.sessions import RedisSessions, SecureSession


@pytest.fixture
async def sessions(redis_url: str) -> AsyncIterator[RedisSessions]:
    redis = Redis.from_url(redis_url)
    store = RedisSessions(redis, prefix=f"test:e2e:{uuid.uuid4().hex}:")
    yield store
    keys = [key async for key in redis.scan_iter(match=store.prefix + "*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()


async def test_a_session_is_stored_with_its_expiry(sessions: RedisSessions) -> None:
    session = SecureSession("s-1", b"g" * 32, b"c" * 32)
    await sessions.create(session, ttl=300)
    assert 0 < await sessions.redis.ttl(sessions.prefix + "s-1") <= 300
    assert await sessions.get("s-1") == session

"""Fixtures the core library's tests share (the session's servers come from keelson_dev.testing)."""

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """A client of the session's Redis, closed after the test."""
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()

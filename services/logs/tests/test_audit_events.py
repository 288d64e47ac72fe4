"""Events published on the bus as logs (`logs.*`) become records, once each."""

import uuid
from collections.abc import Callable

import asyncpg
from logs_testkit import count_of
from redis.asyncio import Redis

from keelson.bus import RedisBus
from keelson.events import Envelope
from keelson_dev.testing import LiveServer, eventually
from logs_service.app import create_app
from logs_service.settings import Settings


async def test_bus_events_published_as_logs_are_stored_once(
    make_logs_settings: Callable[..., Settings],
    redis_url: str,
    pool: asyncpg.Pool,
    service_name: str,
) -> None:
    settings = make_logs_settings(redis_url=redis_url)
    redis = Redis.from_url(redis_url)
    publisher = RedisBus(redis, producer=service_name)
    envelope = Envelope(
        type="logs.audit",
        producer=service_name,
        trace_id="t" * 32,
        data={"level": "WARNING", "message": "role granted", "actor": "admin-1", "role": "ops"},
    )
    try:
        with LiveServer(create_app(settings)):
            await publisher.publish(envelope)
            await publisher.publish(envelope)  # redelivered, or published twice
            marker = envelope.model_copy(update={"id": str(uuid.uuid4()), "data": {}})
            await publisher.publish(marker)  # handled after the duplicate

            async def stored() -> bool:
                return await count_of(pool, service_name) >= 2

            await eventually(stored, timeout=20)
            row = await pool.fetchrow(
                "SELECT * FROM records WHERE service = $1 AND message <> 'logs.audit'", service_name
            )
    finally:
        await redis.aclose()
    assert await count_of(pool, service_name) == 2
    assert row["message"] == "role granted" and row["level"] == 30
    assert row["logger"] == "logs.audit" and row["user_id"] == "admin-1"
    assert row["trace_id"] == "t" * 32
    assert row["id"].hex == envelope.id.replace("-", "")

"""Events read together are queued together: each still mailed once, a bad one alone fails."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from notifications_testkit import SmtpSink, new_email
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from keelson.bus import RedisBus, dead_letter_key
from keelson.config import BusSettings
from keelson.events import Envelope
from keelson_dev.testing import eventually
from notifications_service.intake import EventIntake
from notifications_service.recipients import put_preferences
from notifications_service.settings import EventRoute, NotificationsSettings

# Failures are retried quickly and dead-lettered on the second delivery.
QUICK = BusSettings(block_ms=50, claim_idle_ms=200, max_deliveries=2, batch_size=50)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def topic() -> str:
    """An event type of this test alone, routed to the receipt template."""
    return f"tests.receipt_{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def intake(engine: AsyncEngine, topic: str) -> AsyncIterator[EventIntake]:
    route = EventRoute(template="payment_receipt", category="billing")
    settings = NotificationsSettings(events={topic: route})
    intake = EventIntake(engine, settings, on_queued=lambda channels: None)
    yield intake
    await intake.close()


def receipt(topic: str, *, without: str = "", **data: Any) -> Envelope:
    fields = {"payment_id": f"pay_{uuid.uuid4().hex[:6]}", "amount": 1250, "currency": "eur"}
    fields = {k: v for k, v in {**fields, **data}.items() if k != without}
    return Envelope(type=topic, producer="payments", data=fields)


async def _rows(engine: AsyncEngine, event_ids: Sequence[str]) -> dict[str, list[Any]]:
    async with engine.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT source_event_id, status, last_error FROM notifications"
                " WHERE source_event_id = ANY(:ids)"
            ),
            {"ids": list(event_ids)},
        )
        rows: dict[str, list[Any]] = {i: [] for i in event_ids}
        for row in result:
            rows[row.source_event_id].append(row)
        return rows


async def test_a_batch_mails_each_event_once_and_fails_only_its_bad_events(
    app: Any,
    intake: EventIntake,
    topic: str,
    redis: Redis,
    engine: AsyncEngine,
    smtp_sink: SmtpSink,
) -> None:
    muted_user = f"user-{uuid.uuid4().hex[:8]}"
    async with AsyncSession(engine) as db:
        await put_preferences(
            db, user_id=muted_user, muted_channels=[], muted_categories=["billing"], locale=None
        )
        await db.commit()
    earlier, first, second = (receipt(topic, email=new_email()) for _ in range(3))
    muted = receipt(topic, email=new_email(), user_id=muted_user)
    unrenderable = receipt(topic, email=new_email(), without="amount")  # StrictUndefined
    unstorable = receipt(topic, email="x" * 600 + "@example.com")  # longer than the column
    assert await intake.handle_batch([earlier]) == {}  # queued before; delivered again below

    batches: list[list[str]] = []

    async def handle(envelopes: Sequence[Envelope]) -> dict[str, Exception]:
        batches.append([e.id for e in envelopes])
        return await intake.handle_batch(envelopes)

    bus = RedisBus(redis, producer="payments", settings=QUICK)
    published = [earlier, first, unstorable, first, muted, second, unrenderable]
    for envelope in published:
        await bus.publish(envelope)
    bus.subscribe_batch(topic, handle, group=f"notifications-{topic}")
    await bus.start()
    try:
        # The dead letter comes last: the unstorable event failed in its batch and once more.
        await eventually(lambda: redis.xlen(dead_letter_key(topic)), timeout=30)
    finally:
        await bus.stop()
    assert batches[0] == [e.id for e in published]  # read, and handled, together
    assert batches[1:] == [[unstorable.id]]  # only the bad event was delivered again
    [(_, dead)] = await redis.xrange(dead_letter_key(topic))
    assert Envelope.from_json(dead[b"e"]).id == unstorable.id
    assert b"DataError" in dead[b"error"] or b"too long" in dead[b"error"]

    async def settled() -> dict[str, list[Any]]:
        rows = await _rows(engine, [e.id for e in published])
        done = all(r.status in ("sent", "failed", "suppressed") for v in rows.values() for r in v)
        return rows if done and rows[second.id] else {}

    rows = await eventually(settled, timeout=30)
    assert {i: [r.status for r in v] for i, v in rows.items()} == {
        earlier.id: ["sent"],
        first.id: ["sent"],
        second.id: ["sent"],
        muted.id: ["suppressed"],
        unrenderable.id: ["failed"],
        unstorable.id: [],
    }
    assert "amount" in rows[unrenderable.id][0].last_error
    for envelope in (earlier, first, second):
        assert len(smtp_sink.to(envelope.data["email"])) == 1
    for envelope in (muted, unrenderable):
        assert smtp_sink.to(envelope.data["email"]) == []


async def test_a_batch_the_database_refuses_is_reported_failed_event_by_event(
    intake: EventIntake, topic: str, engine: AsyncEngine
) -> None:
    good = receipt(topic, email=new_email())
    bad = receipt(topic, email="y" * 600 + "@example.com")

    failed = await intake.handle_batch([good, bad, good])

    assert list(failed) == [bad.id]
    rows = await _rows(engine, [good.id, bad.id])
    assert [len(rows[good.id]), len(rows[bad.id])] == [1, 0]
    assert await intake.handle_batch([good]) == {}  # again: nothing new
    assert len((await _rows(engine, [good.id]))[good.id]) == 1

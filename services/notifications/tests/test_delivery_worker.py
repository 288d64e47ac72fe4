"""The delivery worker's pipeline: how it learns of due rows, how it claims them, how it stops.

Each test runs one worker, in process, on a database of its own (the session's app runs
a worker too, which would take the rows otherwise), sending to the real SMTP sink.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from notifications_testkit import SmtpSink, queue_emails
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

import notifications_service
from keelson.db import create_engine, migrate
from keelson.keys import KeyManager
from keelson_dev.testing import eventually, fresh_database, make_settings
from notifications_service.delivery import DeliveryWorker
from notifications_service.plugin import build_channels
from notifications_service.rendering import Composer
from notifications_service.settings import (
    DeliverySettings,
    EmailSettings,
    NotificationsSettings,
    Settings,
)
from notifications_service.templates import TemplateRenderer

# Longer than any test here: whatever a worker sends, it found without polling.
NO_POLL = 3600.0
ONE_EACH = {"email": 1, "sms": 1, "slack": 1, "webhook": 1}
_STATUSES = text("SELECT recipient, status, attempts FROM notifications")


@pytest.fixture
def worker_database(postgres_server_url: str) -> Iterator[str]:
    with fresh_database(postgres_server_url, prefix="keelson_worker") as url:
        migrate(Path(notifications_service.__file__).parent / "migrations", url)
        yield url


@pytest.fixture
async def worker_engine(worker_database: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(
        make_settings(Settings, database_url=worker_database), schema="notifications"
    )
    yield engine
    await engine.dispose()


@pytest.fixture
def make_worker(
    worker_engine: AsyncEngine, worker_database: str, smtp_sink: SmtpSink
) -> Iterator[Callable[..., DeliveryWorker]]:
    workers: list[DeliveryWorker] = []

    def make(**delivery: Any) -> DeliveryWorker:
        settings = make_settings(
            Settings,
            database_url=worker_database,
            notifications=NotificationsSettings(
                email=EmailSettings(port=smtp_sink.port, connections=2),
                delivery=DeliverySettings(**delivery),
            ),
        )
        composer = Composer(
            TemplateRenderer(), KeyManager.from_settings(settings), base_url="http://x.test"
        )
        worker = DeliveryWorker(
            async_sessionmaker(worker_engine, expire_on_commit=False),
            build_channels(settings.notifications),
            composer,
            settings.notifications.delivery,
        )
        workers.append(worker)
        return worker

    yield make
    assert all(not w.alive for w in workers), "a test left its worker running"


def received(sink: SmtpSink, prefix: str) -> list[str]:
    with sink.lock:
        return [r for m in sink.received for r in m.rcpt_tos if r.startswith(prefix)]


async def test_a_backlog_drains_without_the_poll(
    worker_engine: AsyncEngine, make_worker: Callable[..., DeliveryWorker], smtp_sink: SmtpSink
) -> None:
    """Sent: 40 emails queued before the worker starts, two at a time, other channels
    with room but nothing to send, no poll. Holds: every one arrives, once, and so does
    one queued later with a wake-up for its channel. The old worker let a claim for the
    idle channels clear its "more rows are due" flag, then slept until the poll."""
    run = uuid.uuid4().hex[:8]
    await queue_emails(worker_engine, requested_by="test", prefix=f"drain-{run}", count=40)
    worker = make_worker(poll_interval_seconds=NO_POLL, concurrency={**ONE_EACH, "email": 2})
    worker.start()
    try:
        await eventually(lambda: len(received(smtp_sink, f"drain-{run}-")) >= 40, timeout=60)
        await queue_emails(worker_engine, requested_by="test", prefix=f"later-{run}", count=1)
        worker.wake(["email"])
        await eventually(lambda: received(smtp_sink, f"later-{run}-"), timeout=60)
    finally:
        await worker.stop()
    assert sorted(received(smtp_sink, f"drain-{run}-")) == sorted(
        f"drain-{run}-{n}@example.com" for n in range(40)
    )
    async with worker_engine.connect() as conn:
        statuses = {row.status for row in await conn.execute(_STATUSES)}
    assert statuses == {"sent"}


async def test_the_claim_reads_due_rows_in_index_order_with_stale_statistics(
    worker_engine: AsyncEngine, make_worker: Callable[..., DeliveryWorker], smtp_sink: SmtpSink
) -> None:
    """Sent: the statistics taken when nothing was due (ANALYZE over sent rows), then a
    burst of 2,000 due rows, and the worker's claim statements replayed with EXPLAIN.
    Holds: Postgres reads the due rows in index order and stops at the limit (no sort,
    no bitmap of every due row). The old claim's plan read them all and sorted them."""
    run = uuid.uuid4().hex[:8]
    await queue_emails(worker_engine, requested_by="old", prefix=f"old-{run}", count=500)
    async with worker_engine.begin() as conn:
        await conn.execute(text("UPDATE notifications SET status = 'sent'"))
        await conn.execute(text("ANALYZE notifications"))
    await queue_emails(worker_engine, requested_by="test", prefix=f"burst-{run}", count=2000)

    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        statements.append((statement, parameters))

    event.listen(worker_engine.sync_engine, "before_cursor_execute", capture)
    worker = make_worker(poll_interval_seconds=NO_POLL)
    try:
        await worker.claim_and_send()
    finally:
        event.remove(worker_engine.sync_engine, "before_cursor_execute", capture)
        await worker.stop()
    claim = next(i for i, (s, _) in enumerate(statements) if "FOR UPDATE SKIP LOCKED" in s)
    async with worker_engine.connect() as conn, conn.begin():
        for statement, parameters in statements[:claim]:
            await conn.exec_driver_sql(statement, parameters)
        statement, parameters = statements[claim]
        plan = (
            await conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", parameters)
        ).scalar_one()
        await conn.rollback()
    nodes = _node_types(plan if isinstance(plan, list) else json.loads(plan))
    assert "Sort" not in nodes, nodes
    assert "Bitmap Heap Scan" not in nodes, nodes
    assert "Seq Scan" not in nodes, nodes


def _node_types(plan: Any) -> list[str]:
    if isinstance(plan, list):
        return [t for p in plan for t in _node_types(p)]
    found = [plan["Node Type"]] if "Node Type" in plan else []
    for child in plan.get("Plans", []):
        found += _node_types(child)
    return found + (_node_types(plan["Plan"]) if "Plan" in plan else [])


async def test_rows_claimed_ahead_are_given_back_when_the_worker_stops(
    worker_engine: AsyncEngine, make_worker: Callable[..., DeliveryWorker], smtp_sink: SmtpSink
) -> None:
    """Sent: 10 emails to a slow SMTP server, one at a time (so the worker holds the rest
    claimed ahead), and a stop after the first arrives. Holds: what arrived is marked
    sent; every other row is pending again with no attempt counted (none left leased
    for a minute, none sent during the stop); the old stop sent every claimed row."""
    run = uuid.uuid4().hex[:8]
    await queue_emails(worker_engine, requested_by="test", prefix=f"ahead-{run}", count=10)
    worker = make_worker(poll_interval_seconds=NO_POLL, concurrency=ONE_EACH)
    smtp_sink.delay = 0.2
    try:
        worker.start()
        await eventually(lambda: received(smtp_sink, f"ahead-{run}-"), timeout=60)
        await worker.stop()
    finally:
        smtp_sink.delay = 0.0
    async with worker_engine.connect() as conn:
        rows = list(await conn.execute(_STATUSES))
    arrived = set(received(smtp_sink, f"ahead-{run}-"))
    assert {r.recipient for r in rows if r.status == "sent"} == arrived
    waiting = [r for r in rows if r.status != "sent"]
    assert waiting, "every row was sent: nothing was claimed ahead"
    assert all(r.status == "pending" and r.attempts == 0 for r in waiting), waiting


async def test_a_row_waiting_past_half_its_lease_goes_back_and_is_sent_once(
    worker_engine: AsyncEngine, make_worker: Callable[..., DeliveryWorker], smtp_sink: SmtpSink
) -> None:
    """Sent: 4 emails, one sender, an SMTP server taking 1.2 s a mail and a 2 s lease, so
    the rows claimed ahead would wait past their lease for the sender. Holds: each mail
    arrives exactly once, each row sent on its first counted attempt (a row given back
    counts none). Without the guard, a row still waiting here when its lease ran out was
    claimed again, by this worker's own claim, and sent twice."""
    run = uuid.uuid4().hex[:8]
    await queue_emails(worker_engine, requested_by="test", prefix=f"lease-{run}", count=4)
    worker = make_worker(poll_interval_seconds=0.1, lease_seconds=2.0, concurrency=ONE_EACH)
    smtp_sink.delay = 1.2
    try:
        worker.start()
        await eventually(lambda: len(received(smtp_sink, f"lease-{run}-")) >= 4, timeout=120)
        await worker.stop()
    finally:
        smtp_sink.delay = 0.0
    arrived = received(smtp_sink, f"lease-{run}-")
    assert sorted(arrived) == sorted(f"lease-{run}-{n}@example.com" for n in range(4))
    async with worker_engine.connect() as conn:
        rows = list(await conn.execute(_STATUSES))
    assert [(r.status, r.attempts) for r in rows] == [("sent", 1)] * 4, rows

"""The service stopped with SIGTERM while it sends: it exits promptly and loses nothing.

Every bus consumer finishes the blocking read it has in flight (up to the bus's `block_ms`)
before it stops. The intake's consumers (`intake_consumers`, 8 by default) used to stop one
after the other, each waiting out its own read: some 7 s of a notifications stop, where
every other service took well under one.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from notifications_testkit import SmtpSink, queue_emails
from sqlalchemy import text

import notifications_service
from keelson.db import create_engine, migrate
from keelson_dev.embedded import free_port
from keelson_dev.testing import ServiceProcess, eventually, fresh_database, make_settings
from notifications_service.settings import Settings

COUNT = 200
# Long enough that one read per consumer, waited out in turn, cannot pass unseen.
BLOCK_SECONDS = 2.0
_STATUSES = text("SELECT recipient, status FROM notifications WHERE requested_by = 'graceful-stop'")


@pytest.fixture
def stop_database(postgres_server_url: str) -> Iterator[str]:
    with fresh_database(postgres_server_url, prefix="keelson_stop") as url:
        migrate(Path(notifications_service.__file__).parent / "migrations", url)
        yield url


@pytest.mark.timeout(300)
async def test_sigterm_while_sending_exits_after_one_read_and_loses_nothing(
    stop_database: str, redis_url: str, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    """Sent: SIGTERM to the real process (no drain pause) while a slow SMTP server takes
    its mail, with reads blocking 2 s. Holds: it exits within a read for each of the two
    stop phases (the intake's consumers together, then the bus's own) and some room for
    the sends in flight, not one read per consumer in turn; every row it marked sent is at
    the sink, and every other row is still pending or leased for the next process (none
    failed, none dropped)."""
    run = uuid.uuid4().hex[:8]
    engine = create_engine(
        make_settings(Settings, database_url=stop_database), schema="notifications"
    )
    await queue_emails(engine, requested_by="graceful-stop", prefix=f"stop-{run}", count=COUNT)

    def received() -> set[str]:
        with smtp_sink.lock:
            return {
                r for m in smtp_sink.received for r in m.rcpt_tos if r.startswith(f"stop-{run}")
            }

    smtp_sink.delay = 0.05
    service = ServiceProcess(
        "notifications_service",
        tmp_path,
        {
            "KEELSON_DATABASE_URL": stop_database,
            "KEELSON_REDIS_URL": redis_url,
            "KEELSON_LOG__SHIP_ENDPOINT": f"tcp://127.0.0.1:{free_port()}",
            "KEELSON_DRAIN_PAUSE_SECONDS": "0",
            "KEELSON_BUS__BLOCK_MS": str(int(BLOCK_SECONDS * 1000)),
            "KEELSON_NOTIFICATIONS__EMAIL__PORT": str(smtp_sink.port),
            "KEELSON_NOTIFICATIONS__EMAIL__CONNECTIONS": "2",
            "KEELSON_NOTIFICATIONS__CONSUMER_GROUP": f"stop-{run}",
            "KEELSON_NOTIFICATIONS__EVENTS": "{}",
        },
    )
    try:
        await service.wait_for("/health/live")  # it needs no token keys to deliver
        await eventually(lambda: len(received()) >= 5, timeout=60)
        signalled = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(service.process.wait, 60)
        exited = time.monotonic() - signalled
    finally:
        service.stop()
        smtp_sink.delay = 0.0
    try:
        async with engine.connect() as conn:
            statuses = {row.recipient: row.status for row in await conn.execute(_STATUSES)}
    finally:
        await engine.dispose()
    assert code in (0, -signal.SIGTERM), service.log.read_text()[-3000:]
    # The old stop: one read per consumer in turn, 13-17 s here.
    print(f"\nnotifications exited {exited:.1f}s after SIGTERM")
    assert exited < 5 * BLOCK_SECONDS, f"exited {exited:.1f}s after SIGTERM"
    assert len(statuses) == COUNT
    assert set(statuses.values()) <= {"sent", "pending", "sending"}, statuses
    sent = {recipient for recipient, status in statuses.items() if status == "sent"}
    assert sent and sent <= received()
    assert len(sent) < COUNT, "everything was sent before the stop: nothing was tested"

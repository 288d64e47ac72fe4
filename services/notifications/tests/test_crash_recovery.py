"""The service SIGKILLed mid-batch and restarted: every notification reaches the sink.

Rows claimed by the killed process stay `sending` until their lease runs out, then the
new process claims them again. A message the sink had accepted just before the kill may
come a second time (SMTP has no acknowledgement of our own commit), with the same
Message-ID, so a receiver can tell; no message is lost.
"""

from __future__ import annotations

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

COUNT = 300
_COUNT_SENT = text(
    "SELECT count(*) FROM notifications WHERE status = 'sent' AND requested_by = 'test'"
)
_COUNT_SENDING = text(
    "SELECT count(*) FROM notifications WHERE status = 'sending' AND requested_by = 'test'"
)


@pytest.fixture
def crash_database(postgres_server_url: str) -> Iterator[str]:
    with fresh_database(postgres_server_url, prefix="keelson_crash") as url:
        migrate(Path(notifications_service.__file__).parent / "migrations", url)
        yield url


def _process(database: str, redis_url: str, sink: SmtpSink, workdir: Path) -> ServiceProcess:
    return ServiceProcess(
        "notifications_service",
        workdir,
        {
            "KEELSON_DATABASE_URL": database,
            "KEELSON_REDIS_URL": redis_url,
            "KEELSON_LOG__SHIP_ENDPOINT": f"tcp://127.0.0.1:{free_port()}",
            "KEELSON_NOTIFICATIONS__EMAIL__PORT": str(sink.port),
            "KEELSON_NOTIFICATIONS__EMAIL__CONNECTIONS": "2",
            "KEELSON_NOTIFICATIONS__DELIVERY__LEASE_SECONDS": "2",
            "KEELSON_NOTIFICATIONS__DELIVERY__POLL_INTERVAL_SECONDS": "0.1",
            "KEELSON_NOTIFICATIONS__CONSUMER_GROUP": f"crash-{uuid.uuid4().hex[:8]}",
            # Other tests' events on the shared bus must not add mail of their own here.
            "KEELSON_NOTIFICATIONS__EVENTS": "{}",
        },
    )


@pytest.mark.timeout(600)  # two process starts and a lease on a shared, busy machine
async def test_a_killed_sender_resumes_and_every_message_arrives(
    crash_database: str, redis_url: str, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    engine = create_engine(
        make_settings(Settings, database_url=crash_database), schema="notifications"
    )
    await queue_emails(engine, requested_by="test", prefix=f"crash-{run}", count=COUNT)

    def ours() -> list[str]:
        with smtp_sink.lock:
            return [
                m.message_id
                for m in smtp_sink.received
                if m.rcpt_tos[0].startswith(f"crash-{run}-")
            ]

    smtp_sink.delay = 0.005
    first = _process(crash_database, redis_url, smtp_sink, tmp_path)
    try:
        await first.wait_for("/health/live")  # it needs no token keys to deliver
        await eventually(lambda: len(ours()) >= COUNT // 4, timeout=60)
        first.kill()
        async with engine.connect() as conn:
            in_flight = await conn.scalar(_COUNT_SENDING)
            sent_before = await conn.scalar(_COUNT_SENT)
        assert sent_before < COUNT, "everything was sent before the kill: nothing was tested"

        second = _process(crash_database, redis_url, smtp_sink, tmp_path)
        try:
            await second.wait_for("/health/live")

            async def all_sent() -> bool:
                async with engine.connect() as conn:
                    sent = await conn.scalar(_COUNT_SENT)
                return sent == COUNT

            await eventually(all_sent, timeout=240, interval=0.2)
        finally:
            second.stop()
    finally:
        first.stop()
        smtp_sink.delay = 0.0
        await engine.dispose()
    received = ours()
    assert len(set(received)) == COUNT
    assert len(received) - COUNT <= (in_flight or 0)

"""Nothing accepted is lost: the consumer SIGKILLed mid-burst, Postgres away for 10 s."""

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import ExitStack
from pathlib import Path

import asyncpg
import pytest
from logs_testkit import TEST_KEYS, SenderProcess, count_of, logs_service_process

from keelson_dev.embedded import EmbeddedPostgres, free_port
from keelson_dev.testing import ServiceProcess, eventually, migrated
from logs_service.ingest import Ingestor, IntakeAuth
from logs_service.settings import IngestSettings
from logs_service.store import LogStore, create_pool
from logs_service.tail import TailHub

# `python -m logs_service` spends seconds of CPU importing before it answers: on a loaded
# two-core machine its start took over 30 s. The deadline only ends a stuck start (a process
# that dies fails at once).
SERVICE_START_SECONDS = 120


async def assert_exactly_once(pool: asyncpg.Pool, service: str, count: int) -> None:
    row = await pool.fetchrow(
        "SELECT count(*) AS n, count(DISTINCT id) AS ids, count(DISTINCT attrs->>'n') AS records "
        "FROM records WHERE service = $1",
        service,
    )
    assert (row["n"], row["ids"], row["records"]) == (count, count, count)


# Above the sum of the waits inside (2 starts, 60, 180), so the one that names the stuck step
# fails the test rather than the suite's 120 s.
@pytest.mark.timeout(600)
async def test_a_consumer_killed_during_a_burst_loses_and_doubles_nothing(
    logs_database_url: str, pool: asyncpg.Pool, service_name: str, tmp_path: Path
) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with ExitStack() as running:  # every process started is killed, whichever step fails

        async def start_consumer() -> ServiceProcess:
            consumer = logs_service_process(
                database_url=logs_database_url,
                bind_endpoint=endpoint,
                workdir=tmp_path,
                senders=[service_name],
            )
            running.callback(consumer.kill)
            await consumer.wait_for("/health/live", timeout=SERVICE_START_SECONDS)
            return consumer

        consumer = await start_consumer()
        sender = SenderProcess(endpoint, service_name, 50_000, tmp_path / "spill", rate=25_000)
        running.callback(sender.kill)

        async def mid_burst() -> bool:
            return await count_of(pool, service_name) >= 5_000

        await eventually(mid_burst, timeout=60, interval=0.01)
        consumer.kill()
        at_kill = await count_of(pool, service_name)
        assert at_kill < 50_000, "the burst was over before the kill"

        await start_consumer()
        result = await asyncio.to_thread(sender.result, 180)
    assert result["drained"] and result["dropped"] == {}
    assert result["acknowledged"] == 50_000
    await assert_exactly_once(pool, service_name, 50_000)
    print(f"killed at {at_kill} committed; sender re-sent {result['resent_batches']} batches")


@pytest.fixture
async def own_postgres() -> AsyncIterator[EmbeddedPostgres]:
    """A server of the test's own, which it may stop and start."""
    base = Path(tempfile.mkdtemp(prefix="keelson-logs-pg-"))
    server = EmbeddedPostgres(base / "data", free_port())
    await asyncio.to_thread(server.start)
    try:
        await asyncio.to_thread(migrated, server.url, "logs_service")
        yield server
    finally:
        await asyncio.to_thread(server.stop)
        shutil.rmtree(base, ignore_errors=True)


async def test_postgres_stopped_for_ten_seconds_during_a_burst(
    own_postgres: EmbeddedPostgres, service_name: str, tmp_path: Path
) -> None:
    pool = await create_pool(own_postgres.url, schema="logs", max_size=4)
    settings = IngestSettings(bind_endpoint=f"tcp://127.0.0.1:{free_port()}", retry_max_seconds=1)
    curve = IntakeAuth.derive(TEST_KEYS, [service_name])
    ingestor = Ingestor(settings, LogStore(pool), TailHub(), curve=curve)
    await ingestor.start()
    sender = SenderProcess(
        settings.bind_endpoint, service_name, 20_000, tmp_path / "spill", rate=5_000
    )
    try:

        async def mid_burst() -> bool:
            return await count_of(pool, service_name) >= 2_000

        await eventually(mid_burst, timeout=60, interval=0.01)
        await asyncio.to_thread(own_postgres.stop)
        await asyncio.sleep(10)  # the outage itself, not a synchronisation
        assert ingestor.failing_for > 5
        await asyncio.to_thread(own_postgres.start)
        result = await asyncio.to_thread(sender.result, 180)
        assert result["drained"] and result["dropped"] == {}
        assert ingestor.failing_for == 0
        await assert_exactly_once(pool, service_name, 20_000)
    finally:
        sender.kill()
        await ingestor.stop(grace=5)
        await pool.close()

import uuid
from datetime import UTC, date, datetime, timedelta

import asyncpg

from logs_service.plugins import upkeep_partitions
from logs_service.records import LogRow
from logs_service.store import LogStore, partition_name


def row(service: str, ts: datetime, message: str = "m") -> LogRow:
    return LogRow(uuid.uuid4(), ts, service, 20, "test", message, None, None, None, "{}")


async def test_a_batch_written_twice_is_stored_once(store: LogStore, service_name: str) -> None:
    now = datetime.now(UTC)
    rows = [row(service_name, now - timedelta(seconds=i)) for i in range(50)]
    first = await store.write(rows[:30])
    assert len(first.inserted) == 30 and first.duplicates == 0
    again = await store.write(rows)  # the first 30 again, with 20 new ones
    assert len(again.inserted) == 20 and again.duplicates == 30
    count = await store.pool.fetchval(
        "SELECT count(*) FROM records WHERE service = $1", service_name
    )
    assert count == 50


async def test_rows_the_database_refuses_are_split_out(store: LogStore, service_name: str) -> None:
    now = datetime.now(UTC)
    rows = [row(service_name, now, f"fine {i}") for i in range(9)]
    rows.insert(4, row(service_name, now, "bad \udcff surrogate"))
    outcome = await store.write(rows)
    assert len(outcome.refused) == 1 and "surrogate" in outcome.refused[0].message
    assert len(outcome.inserted) == 9


async def test_partitions_are_made_ahead_and_only_old_ones_dropped(
    store: LogStore, pool: asyncpg.Pool
) -> None:
    await store.ensure_partitions([datetime.now(UTC).date()])
    today = datetime(2020, 1, 20, 12, tzinfo=UTC)
    old = [date(2020, 1, 1), date(2020, 1, 5), date(2020, 1, 6)]
    await store.ensure_partitions(old)
    await store.write([row("retention", datetime(2020, 1, 1, 8, tzinfo=UTC))])
    await store.write([row("retention", datetime(2020, 1, 6, 23, tzinfo=UTC))])

    dropped = await upkeep_partitions(store, retention_days=14, ahead_days=3, today=today)

    # 14 days before the 20th is the 6th: whole days before it go, the 6th stays.
    assert dropped == ["2020-01-01", "2020-01-05"]
    days = set(await store.partitions())
    assert date(2020, 1, 6) in days
    assert {date(2020, 1, 19) + timedelta(days=n) for n in range(5)} <= days
    assert not {date(2020, 1, 1), date(2020, 1, 5)} & days
    remaining = await pool.fetch("SELECT ts FROM records WHERE service = 'retention'")
    assert [r["ts"].date() for r in remaining] == [date(2020, 1, 6)]
    tables = await pool.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'logs'")
    names = {t["tablename"] for t in tables}
    assert partition_name(date(2020, 1, 6)) in names
    assert partition_name(date(2020, 1, 1)) not in names
    # Today's partitions (other tests' records) are far newer and untouched.
    assert partition_name(datetime.now(UTC).date()) in names
    await store.drop_partitions_before(date(2020, 2, 1))

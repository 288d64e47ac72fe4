"""Writes to `logs.records`: day partitions made on demand, COPY, exactly once by record id.

The table is partitioned by UTC day on `ts` and its primary key is `(ts, id)`: a record
sent again carries the same id and ts, so it lands in the same partition and collides.
A batch is first COPYed straight in (the common case: nothing in it was seen before);
if any row is already there the transaction fails whole, and the batch goes through a
temporary table and `INSERT ... ON CONFLICT DO NOTHING` instead. Either way a batch is
committed entirely or not at all, so a retry never half-writes it twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

import asyncpg

from keelson.db import advisory_xact_lock
from logs_service.records import COLUMNS, LogRow

__all__ = [
    "PARTITION_PREFIX",
    "POISON_ERRORS",
    "TABLE",
    "LogStore",
    "WriteOutcome",
    "create_pool",
    "partition_name",
]

_log = logging.getLogger("logs_service.store")

TABLE = "records"
PARTITION_PREFIX = "records_p"
_STAGING = "incoming_records"
# Errors that come from the rows themselves: retrying cannot help, so the batch is split
# to find and refuse the offending rows. Anything else (connection lost, server shutting
# down, missing table) is retried with the whole batch.
POISON_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    ValueError,
    TypeError,
    OverflowError,
)
_LIST_PARTITIONS = """
SELECT c.relname FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
JOIN pg_class p ON p.oid = i.inhparent
JOIN pg_namespace n ON n.oid = p.relnamespace
WHERE n.nspname = $1 AND p.relname = $2
"""


@dataclass
class WriteOutcome:
    inserted: list[LogRow] = field(default_factory=list)
    duplicates: int = 0
    refused: list[LogRow] = field(default_factory=list)


def partition_name(day: date) -> str:
    return f"{PARTITION_PREFIX}{day:%Y%m%d}"


def _partition_day(name: str) -> date | None:
    if not name.startswith(PARTITION_PREFIX):
        return None
    try:
        return datetime.strptime(name.removeprefix(PARTITION_PREFIX), "%Y%m%d").date()
    except ValueError:
        return None


async def create_pool(dsn: str, *, schema: str, max_size: int) -> asyncpg.Pool:
    """A pool that connects lazily, so the service starts while the database is away."""
    return await asyncpg.create_pool(
        dsn,
        min_size=0,
        max_size=max_size,
        timeout=5,
        command_timeout=60,
        max_inactive_connection_lifetime=300,
        server_settings={"search_path": f"{schema},public", "application_name": "keelson-logs"},
    )


class LogStore:
    """The records table of one schema, reached through an asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool, *, schema: str = "logs") -> None:
        self.pool = pool
        self.schema = schema
        self._days: set[date] | None = None
        self._partition_lock = asyncio.Lock()

    async def partitions(self) -> list[date]:
        rows = await self.pool.fetch(_LIST_PARTITIONS, self.schema, TABLE)
        days = sorted(d for d in (_partition_day(r["relname"]) for r in rows) if d is not None)
        self._days = set(days)
        return days

    async def ensure_partitions(self, days: Iterable[date]) -> None:
        """Create the partitions of `days` that do not exist yet."""
        if self._days is None:
            await self.partitions()
        assert self._days is not None
        missing = sorted(set(days) - self._days)
        if not missing:
            return
        async with self._partition_lock, self.pool.acquire() as conn, conn.transaction():
            # Another instance of the service may be creating the same partition.
            await advisory_xact_lock(conn, self._lock_name)
            for day in missing:
                start = datetime.combine(day, time(), UTC)
                await conn.execute(
                    f'CREATE TABLE IF NOT EXISTS "{self.schema}"."{partition_name(day)}" '
                    f'PARTITION OF "{self.schema}"."{TABLE}" '
                    f"FOR VALUES FROM ('{start.isoformat()}') "
                    f"TO ('{(start + timedelta(days=1)).isoformat()}')"
                )
        self._days.update(missing)

    async def drop_partitions_before(self, cutoff: date) -> list[date]:
        """Drop every partition whose whole day is before `cutoff`; returns their days."""
        dropped = [day for day in await self.partitions() if day < cutoff]
        if not dropped:
            return []
        async with self._partition_lock, self.pool.acquire() as conn, conn.transaction():
            await advisory_xact_lock(conn, self._lock_name)
            for day in dropped:
                await conn.execute(f'DROP TABLE IF EXISTS "{self.schema}"."{partition_name(day)}"')
        assert self._days is not None
        self._days.difference_update(dropped)
        return dropped

    async def write(self, rows: Sequence[LogRow]) -> WriteOutcome:
        """Commit `rows` once each; rows the database refuses are split out and returned."""
        if not rows:
            return WriteOutcome()
        await self.ensure_partitions({row.ts.date() for row in rows})
        try:
            return await self._write(rows)
        except POISON_ERRORS as exc:
            if len(rows) == 1:
                _log.warning("a log record was refused by the database: %s", type(exc).__name__)
                return WriteOutcome(refused=list(rows))
        middle = len(rows) // 2
        first, second = await self.write(rows[:middle]), await self.write(rows[middle:])
        return WriteOutcome(
            inserted=first.inserted + second.inserted,
            duplicates=first.duplicates + second.duplicates,
            refused=first.refused + second.refused,
        )

    async def _write(self, rows: Sequence[LogRow]) -> WriteOutcome:
        async with self.pool.acquire() as conn:
            try:
                async with conn.transaction():
                    await conn.copy_records_to_table(
                        TABLE, schema_name=self.schema, records=rows, columns=COLUMNS
                    )
                return WriteOutcome(inserted=list(rows))
            except asyncpg.UniqueViolationError:
                pass  # some were committed before (a re-sent batch): keep only the new ones
            async with conn.transaction():
                await conn.execute(
                    f"CREATE TEMP TABLE IF NOT EXISTS {_STAGING} "
                    f'(LIKE "{self.schema}"."{TABLE}") ON COMMIT DELETE ROWS'
                )
                await conn.copy_records_to_table(_STAGING, records=rows, columns=COLUMNS)
                new_keys = await conn.fetch(self._insert_new)
        inserted_keys = {(r["ts"], r["id"]) for r in new_keys}
        inserted = [row for row in rows if (row.ts, row.id) in inserted_keys]
        return WriteOutcome(inserted=inserted, duplicates=len(rows) - len(inserted))

    @property
    def _insert_new(self) -> str:
        # The schema name is the service's own constant, never input.
        return (
            f'INSERT INTO "{self.schema}"."{TABLE}" SELECT * FROM {_STAGING} '  # noqa: S608
            "ON CONFLICT DO NOTHING RETURNING ts, id"
        )

    @property
    def _lock_name(self) -> str:
        return f"keelson.logs.partitions.{self.schema}"

"""Transactional outbox: events written with the caller's data, relayed to the bus later.

`add_to_outbox(session, event)` inserts the event in the caller's transaction, so the
event exists if and only if the business change committed. The relay claims a batch of
unpublished rows and marks them published, publishes them, and only then commits, one
transaction per batch: a crash or a failed commit in between publishes that batch's rows
twice, never zero times (and never a row whose mark an earlier batch committed), which is
why consumers deduplicate by envelope id (`mark_processed`).
Published rows are kept for `retention` and then purged; the rows of events that carry a
secret (`Event.purge_on_publish`, the sealed action tokens) are deleted in the transaction
that publishes them, so they outlive their relay by no more than that transaction.
Tables are unqualified at run time and found through the service's search path.
The relay polls, and is woken at once when a session that wrote to the outbox commits
in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, NamedTuple

from pydantic import BaseModel, Field
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    Insert,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    delete,
    event,
    func,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import ReturningInsert, ReturningUpdate

from keelson.bus import BUS, Bus
from keelson.db import DB_ENGINE
from keelson.events import Envelope, Event, purged_on_publish
from keelson.plugins import Health, Plugin, PluginMetadata, Priority
from keelson.tasks import finish_or_cancel

__all__ = [
    "OutboxRelay",
    "OutboxRelayOptions",
    "OutboxRelayPlugin",
    "OutboxTables",
    "add_to_outbox",
    "create_outbox_tables",
    "drop_outbox_tables",
    "mark_processed",
    "outbox_insert",
    "outbox_parameters",
    "outbox_tables",
]

_log = logging.getLogger("keelson.outbox")
_DIRTY = "keelson_outbox_dirty"

_OUTBOX = "outbox"
_PROCESSED = "processed_events"
_UNPUBLISHED_INDEX = "ix_outbox_unpublished"
_PUBLISHED_AT_INDEX = "ix_outbox_published_at"
_BATCHES_PER_PASS = 10


class OutboxTables(NamedTuple):
    outbox: Table
    processed_events: Table


def _outbox_columns() -> list[Column[object]]:
    return [
        Column("id", BigInteger, Identity(), primary_key=True),
        Column("topic", String(200), nullable=False),
        Column("payload", JSONB, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("published_at", DateTime(timezone=True), nullable=True),
    ]


def _processed_columns() -> list[Column[object]]:
    return [
        Column("event_id", String(255), primary_key=True),
        Column("group", String(200), primary_key=True),
        Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    ]


def outbox_tables(metadata: MetaData, *, schema: str | None = None) -> OutboxTables:
    """The two tables in `metadata` (created there once; later calls return the same)."""
    prefix = f"{schema or metadata.schema}." if (schema or metadata.schema) else ""
    existing = metadata.tables.get(prefix + _OUTBOX)
    if existing is not None:
        return OutboxTables(existing, metadata.tables[prefix + _PROCESSED])
    outbox = Table(_OUTBOX, metadata, *_outbox_columns(), schema=schema)
    Index(_UNPUBLISHED_INDEX, outbox.c.id, postgresql_where=outbox.c.published_at.is_(None))
    Index(_PUBLISHED_AT_INDEX, outbox.c.published_at)
    processed = Table(_PROCESSED, metadata, *_processed_columns(), schema=schema)
    return OutboxTables(outbox, processed)


_RUNTIME = outbox_tables(MetaData())


async def add_to_outbox(
    session: AsyncSession, event: Event | Envelope, *, producer: str = ""
) -> Envelope:
    """Queue `event` in the session's transaction; it is relayed after the commit.

    An empty `producer` is filled in by the relay with its service's name.
    """
    envelope = event.envelope(producer=producer) if isinstance(event, Event) else event
    await session.execute(outbox_insert(0), outbox_parameters(session, [envelope]))
    return envelope


@functools.cache
def outbox_insert(index: int = 0) -> Insert:
    """The INSERT of one outbox row, whose parameters are those `outbox_parameters` gives
    the `index`-th event, built once per index (so SQLAlchemy compiles it once: a
    multi-row VALUES is never cached): run it alone or as a CTE of a larger statement."""
    columns = _RUNTIME.outbox.c
    return _RUNTIME.outbox.insert().values(
        topic=bindparam(f"outbox_topic_{index}", type_=columns.topic.type),
        payload=bindparam(f"outbox_payload_{index}", type_=columns.payload.type),
    )


def outbox_parameters(session: AsyncSession, events: Sequence[Event | Envelope]) -> dict[str, Any]:
    """The parameters of `outbox_insert(i)` for each i-th of `events`; the relay is woken
    when `session` commits, as with `add_to_outbox`."""
    parameters: dict[str, Any] = {}
    for i, item in enumerate(events):
        envelope = item.envelope(producer="") if isinstance(item, Event) else item
        parameters[f"outbox_topic_{i}"] = envelope.type
        parameters[f"outbox_payload_{i}"] = envelope.model_dump(mode="json")
    session.info[_DIRTY] = True
    return parameters


@functools.cache
def _processed_insert() -> ReturningInsert[Any]:
    """The INSERT behind `mark_processed`: one row back when the event is new, none when not."""
    table = _RUNTIME.processed_events
    return (
        insert(table)
        .values(
            event_id=bindparam("event_id", type_=table.c.event_id.type),
            group=bindparam("group", type_=table.c.group.type),
        )
        .on_conflict_do_nothing()
        .returning(literal_column("1"))
    )


async def mark_processed(session: AsyncSession, *, event_id: str, group: str) -> bool:
    """Record that `group` handled `event_id` in the caller's transaction.

    Returns False when it was already recorded: the caller skips its work, and since the
    record commits with that work, a redelivered event has its effect exactly once.
    """
    result = await session.execute(_processed_insert(), {"event_id": event_id, "group": group})
    return result.first() is not None


def create_outbox_tables(schema: str) -> None:
    """Alembic `upgrade()` body: the outbox and processed_events tables in `schema`."""
    from alembic import op

    op.create_table(_OUTBOX, *_outbox_columns(), schema=schema)
    op.create_index(
        _UNPUBLISHED_INDEX,
        _OUTBOX,
        ["id"],
        schema=schema,
        postgresql_where=text("published_at IS NULL"),
    )
    op.create_index(_PUBLISHED_AT_INDEX, _OUTBOX, ["published_at"], schema=schema)
    op.create_table(_PROCESSED, *_processed_columns(), schema=schema)


def drop_outbox_tables(schema: str) -> None:
    """Alembic `downgrade()` body."""
    from alembic import op

    op.drop_table(_PROCESSED, schema=schema)
    op.drop_table(_OUTBOX, schema=schema)


class _Wakers:
    """The relays of this process, woken when a session that used the outbox commits."""

    def __init__(self) -> None:
        self._events: dict[asyncio.Event, asyncio.AbstractEventLoop] = {}

    def add(self, wake: asyncio.Event) -> None:
        self._events[wake] = asyncio.get_running_loop()

    def discard(self, wake: asyncio.Event) -> None:
        self._events.pop(wake, None)

    def after_commit(self, session: Session) -> None:
        if session.info.pop(_DIRTY, False):
            for wake, loop in list(self._events.items()):
                with contextlib.suppress(RuntimeError):  # its loop is closed
                    loop.call_soon_threadsafe(wake.set)

    @staticmethod
    def after_rollback(session: Session) -> None:
        session.info.pop(_DIRTY, None)


_WAKERS = _Wakers()
event.listen(Session, "after_commit", _WAKERS.after_commit)
event.listen(Session, "after_rollback", _WAKERS.after_rollback)


class OutboxRelay:
    """Publishes unpublished outbox rows in id order, a batch of `batch_size` at most per
    transaction, which commits once the bus has taken the batch.

    Rows are locked with `FOR UPDATE SKIP LOCKED`, so several relays (replicas) share
    the work without publishing a row twice while they are healthy.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        bus: Bus,
        *,
        producer: str,
        batch_size: int = 100,
        poll_interval: float = 1.0,
        retention: timedelta = timedelta(days=7),
    ) -> None:
        self.engine = engine
        self.bus = bus
        self.producer = producer
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.retention = retention
        self.last_error: str | None = None
        self.passes = 0  # completed polls, published or not
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._next_purge = 0.0

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        _WAKERS.add(self._wake)
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self, timeout: float = 10.0) -> None:
        """Let the batch in flight finish (it holds row locks), then stop."""
        self._stopping = True
        self._wake.set()
        _WAKERS.discard(self._wake)
        if self._task is None:
            return
        await finish_or_cancel(self._task, timeout)
        self._task = None

    async def relay_once(self) -> int:
        """Publish and mark the rows waiting, a batch of at most `batch_size` per
        transaction; returns how many it published."""
        async with self.engine.connect() as conn:
            published, _ = await self._relay_pass(conn)
        return published

    async def _relay_pass(self, conn: AsyncConnection) -> tuple[int, bool]:
        """Batches while rows keep coming; (published, more may wait).

        The pass goes on to another batch while the last one was full or a commit in this
        process woke the relay meanwhile, for at most `_BATCHES_PER_PASS` batches; a row
        committed by another process is found by the next poll.
        """
        published = 0
        for _ in range(_BATCHES_PER_PASS):
            self._wake.clear()
            count = await self._relay_batch(conn)
            published += count
            more = count == self.batch_size
            if self._stopping or not (more or self._wake.is_set()):
                return published, more
        return published, True

    async def _relay_batch(self, conn: AsyncConnection) -> int:
        """Claim, publish and mark the oldest unclaimed rows in one transaction.

        One statement claims the rows and marks them published; they are published in
        id order in one bus round trip, the rows of events carrying a secret are deleted,
        and the transaction commits. A failed publish or commit rolls the whole batch
        back, so the next batch publishes exactly those rows again, never a row whose
        mark an earlier commit acknowledged.
        """
        table = _RUNTIME.outbox
        async with conn.begin():
            rows = (await conn.execute(self._claim(), {"limit": self.batch_size})).all()
            if not rows:
                return 0
            rows.sort(key=lambda row: int(row.id))  # RETURNING has no order
            envelopes = [self._envelope(row.payload) for row in rows]
            await self.bus.publish_many(envelopes)
            secret = [
                row.id
                for row, envelope in zip(rows, envelopes, strict=True)
                if purged_on_publish(envelope.type, envelope.version)
            ]
            if secret:
                await conn.execute(delete(table).where(table.c.id.in_(secret)))
        return len(rows)

    @staticmethod
    @functools.cache
    def _claim() -> ReturningUpdate[tuple[int, Any]]:
        """Lock the oldest unclaimed rows (at most `:limit`), mark them published, return
        them (built once)."""
        table = _RUNTIME.outbox
        oldest = (
            select(table.c.id)
            .where(table.c.published_at.is_(None))
            .order_by(table.c.id)
            .limit(bindparam("limit", type_=Integer()))
            .with_for_update(skip_locked=True)
        )
        return (
            update(table)
            .where(table.c.id.in_(oldest.scalar_subquery()))
            .values(published_at=func.now())
            .returning(table.c.id, table.c.payload)
        )

    async def purge(self) -> int:
        """Delete rows published longer ago than `retention`."""
        table = _RUNTIME.outbox
        async with self.engine.begin() as conn:
            result = await conn.execute(
                delete(table).where(table.c.published_at < func.now() - self.retention)
            )
        return result.rowcount

    def _envelope(self, payload: dict[str, Any]) -> Envelope:
        if not payload.get("producer"):
            payload = {**payload, "producer": self.producer}
        return Envelope.model_validate(payload)

    async def _run(self) -> None:
        backoff = 0.1
        while not self._stopping:
            try:
                async with self.engine.connect() as conn:
                    await self._serve(conn)
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                _log.warning("outbox relay failed, retrying: %s", self.last_error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
            else:
                backoff = 0.1

    async def _serve(self, conn: AsyncConnection) -> None:
        """Passes on `conn`, one each time the relay is woken or `poll_interval` elapses.

        A relay kept busy keeps its connection (one checkout and pre-ping, not one per
        pass); once a poll interval goes by without a wake it gives the connection back to
        the pool, and the next poll checks one out again.
        """
        while not self._stopping:
            self._wake.clear()
            _, more = await self._relay_pass(conn)
            if time.monotonic() >= self._next_purge:
                await self.purge()
                self._next_purge = time.monotonic() + 600
            self.last_error = None
            self.passes += 1
            if more:
                continue
            try:
                async with asyncio.timeout(self.poll_interval):
                    await self._wake.wait()
            except TimeoutError:
                return


class OutboxRelayOptions(BaseModel):
    """`plugins.outbox_relay` settings."""

    batch_size: int = Field(100, ge=1, le=10_000)
    poll_interval_seconds: float = Field(1.0, gt=0)
    retention_days: float = Field(7.0, gt=0)


class OutboxRelayPlugin(Plugin):
    """Runs an `OutboxRelay` for the service; register it when the service uses the outbox."""

    metadata = PluginMetadata(
        name="outbox_relay",
        priority=Priority.BUSINESS,
        depends_on=("database", "bus"),
        description="Relays the transactional outbox to the bus",
    )

    async def initialize(self) -> None:
        self.relay_options = self.options(OutboxRelayOptions)

    async def start(self) -> None:
        options = self.relay_options
        self.relay = OutboxRelay(
            self.container.resolve(DB_ENGINE),
            self.container.resolve(BUS),
            producer=self.container.settings.service,
            batch_size=options.batch_size,
            poll_interval=options.poll_interval_seconds,
            retention=timedelta(days=options.retention_days),
        )
        self.relay.start()

    async def stop(self) -> None:
        await self.relay.stop()

    async def health(self) -> Health:
        if not self.relay.alive:
            return Health(ok=False, detail="relay stopped")
        if self.relay.last_error:
            return Health(ok=False, detail=self.relay.last_error, critical=False)
        return Health(ok=True)

"""Transactional outbox: events written with the caller's data, relayed to the bus later.

`add_to_outbox(session, event)` inserts the event in the caller's transaction, so the
event exists if and only if the business change committed. The relay publishes unpublished
rows and only then marks them published: a crash in between publishes a row twice, never
zero times, which is why consumers deduplicate by envelope id (`mark_processed`).
Tables are unqualified at run time and found through the service's search path.
"""

from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    MetaData,
    String,
    Table,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession

from keelson.events import Envelope, Event

__all__ = [
    "OutboxTables",
    "add_to_outbox",
    "create_outbox_tables",
    "drop_outbox_tables",
    "mark_processed",
    "outbox_tables",
]

_OUTBOX = "outbox"
_PROCESSED = "processed_events"
_UNPUBLISHED_INDEX = "ix_outbox_unpublished"
_PUBLISHED_AT_INDEX = "ix_outbox_published_at"


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
    session: AsyncSession, event: Event | Envelope, *, producer: str | None = None
) -> Envelope:
    """Queue `event` in the session's transaction; it is relayed after the commit.

    An `Event` needs `producer` (the service name) to be wrapped in its envelope.
    """
    if isinstance(event, Event):
        if producer is None:
            raise ValueError("add_to_outbox needs producer= to wrap an Event")
        envelope = event.envelope(producer=producer)
    else:
        envelope = event
    await session.execute(
        _RUNTIME.outbox.insert().values(
            topic=envelope.type, payload=envelope.model_dump(mode="json")
        )
    )
    session.info["keelson_outbox_dirty"] = True
    return envelope


async def mark_processed(session: AsyncSession, *, event_id: str, group: str) -> bool:
    """Record that `group` handled `event_id` in the caller's transaction.

    Returns False when it was already recorded: the caller skips its work, and since the
    record commits with that work, a redelivered event has its effect exactly once.
    """
    table = _RUNTIME.processed_events
    result = await session.execute(
        insert(table)
        .values(event_id=event_id, group=group)
        .on_conflict_do_nothing()
        .returning(text("1"))
    )
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

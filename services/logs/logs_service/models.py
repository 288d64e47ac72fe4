"""Tables of the logs service, all in its own `logs` schema."""

from __future__ import annotations

from sqlalchemy import (
    Column,
    DateTime,
    Index,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase

__all__ = ["SCHEMA", "Base", "records"]

SCHEMA = "logs"


class Base(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)


# Partitioned by UTC day on ts (partitions `records_pYYYYMMDD`, made by logs_service.store);
# the primary key holds the partition key, so a record id is unique within its day.
records = Table(
    "records",
    Base.metadata,
    Column("id", Uuid, nullable=False),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("service", Text, nullable=False),
    Column("level", SmallInteger, nullable=False),
    Column("logger", Text, nullable=False),
    Column("message", Text, nullable=False),
    Column("request_id", Text),
    Column("trace_id", Text),
    Column("user_id", Text),
    Column("attrs", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    PrimaryKeyConstraint("ts", "id", name="records_pkey"),
    Index("records_service_ts", "service", text("ts DESC")),
    Index("records_level_ts", "level", text("ts DESC")),
    Index(
        "records_request_id",
        "request_id",
        postgresql_where=text("request_id IS NOT NULL"),
    ),
    Index(
        "records_user_id_ts",
        "user_id",
        text("ts DESC"),
        postgresql_where=text("user_id IS NOT NULL"),
    ),
    Index(
        "records_message_fts",
        func.to_tsvector(text("'simple'"), text("message")),
        postgresql_using="gin",
    ),
    postgresql_partition_by="RANGE (ts)",
)

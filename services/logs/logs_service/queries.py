"""Reading records: filtered keyset pages (newest first) and counts by service and level."""

from __future__ import annotations

import binascii
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from keelson.encoding import b64url_decode, b64url_encode
from keelson.errors import BadRequest, ServiceUnavailable
from logs_service.records import LogRow

__all__ = ["Cursor", "LevelCount", "count_records", "search_records"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MICROSECOND = timedelta(microseconds=1)
_SELECT = (
    "SELECT id, ts, service, level, logger, message, request_id, trace_id, user_id, "
    "attrs::text AS attrs FROM records"
)


_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
)


@contextmanager
def _store_answering() -> Iterator[None]:
    """A database that is away is a 503 with Retry-After, not a 500."""
    try:
        yield
    except _UNAVAILABLE:
        raise ServiceUnavailable("the log store is unavailable", retry_after=5) from None


@dataclass(frozen=True)
class Cursor:
    """The (ts, id) of the last record of a page: the next page starts strictly after it."""

    ts: datetime
    id: uuid.UUID

    def encode(self) -> str:
        micros = (self.ts - _EPOCH) // _ONE_MICROSECOND
        raw = f"{micros}.{self.id.hex}".encode()
        return b64url_encode(raw)

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            raw = b64url_decode(text).decode()
            micros, hex_id = raw.split(".")
            return cls(_EPOCH + int(micros) * _ONE_MICROSECOND, uuid.UUID(hex=hex_id))
        except (ValueError, binascii.Error, OverflowError):
            raise BadRequest("cursor: not a cursor this API returned") from None


@dataclass(frozen=True)
class LevelCount:
    service: str
    level: int
    count: int


async def search_records(
    pool: asyncpg.Pool,
    *,
    limit: int,
    service: str | None = None,
    min_level: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    request_id: str | None = None,
    user_id: str | None = None,
    text: str | None = None,
    after: Cursor | None = None,
) -> tuple[list[LogRow], Cursor | None]:
    """One page, newest first, and the cursor of the next (None on the last page).

    Keyset pagination on (ts, id): records that arrive while a client pages through are
    newer than its first page and never shift the later pages.
    """
    conditions: list[str] = []
    args: list[Any] = []

    def where(sql: str, value: Any) -> None:
        args.append(value)
        conditions.append(sql.replace("?", f"${len(args)}"))

    if service is not None:
        where("service = ?", service)
    if min_level is not None:
        where("level >= ?", min_level)
    if since is not None:
        where("ts >= ?", since)
    if until is not None:
        where("ts < ?", until)
    if request_id is not None:
        where("request_id = ?", request_id)
    if user_id is not None:
        where("user_id = ?", user_id)
    if text:
        where("to_tsvector('simple', message) @@ websearch_to_tsquery('simple', ?)", text)
    if after is not None:
        args.extend((after.ts, after.id))
        conditions.append(f"(ts, id) < (${len(args) - 1}, ${len(args)})")
    args.append(limit + 1)
    sql = _SELECT
    if conditions:
        sql += " WHERE " + " AND ".join(conditions)
    sql += f" ORDER BY ts DESC, id DESC LIMIT ${len(args)}"
    with _store_answering():
        rows = [LogRow(*record) for record in await pool.fetch(sql, *args)]
    if len(rows) <= limit:
        return rows, None
    page = rows[:limit]
    return page, Cursor(page[-1].ts, page[-1].id)


async def count_records(
    pool: asyncpg.Pool, *, since: datetime, until: datetime | None = None
) -> list[LevelCount]:
    sql = "SELECT service, level, count(*) AS n FROM records WHERE ts >= $1"
    args: list[Any] = [since]
    if until is not None:
        sql += " AND ts < $2"
        args.append(until)
    sql += " GROUP BY service, level ORDER BY service, level"
    with _store_answering():
        rows = await pool.fetch(sql, *args)
    return [LevelCount(r["service"], r["level"], r["n"]) for r in rows]

"""`/api/v1/logs`: search, live tail (Server-Sent Events) and counts."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from keelson.fields import BoundedDatetime, SingleLine
from logs_service.deps import IngestSettingsDep, Operator, StoreDep, TailHubDep
from logs_service.queries import Cursor, count_records, search_records
from logs_service.records import level_name
from logs_service.schemas import (
    Level,
    LevelCountPublic,
    LogPage,
    LogRecordPublic,
    LogStats,
)
from logs_service.tail import TailHub

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/logs", tags=["logs"])

_SHORT = Annotated[SingleLine | None, Query(max_length=128)]


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@router.get("", response_model=LogPage, summary="Search log records, newest first")
async def list_logs(
    _: Operator,
    store: StoreDep,
    service: _SHORT = None,
    level: Annotated[Level | None, Query(description="this level and above")] = None,
    since: BoundedDatetime | None = None,
    until: BoundedDatetime | None = None,
    request_id: _SHORT = None,
    user_id: _SHORT = None,
    q: Annotated[
        SingleLine | None, Query(max_length=256, description="full text in message")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[SingleLine | None, Query(max_length=128)] = None,
) -> LogPage:
    rows, next_cursor = await search_records(
        store.pool,
        limit=limit,
        service=service,
        min_level=level.number if level else None,
        since=_utc(since),
        until=_utc(until),
        request_id=request_id,
        user_id=user_id,
        text=q,
        after=Cursor.decode(cursor) if cursor else None,
    )
    return LogPage(
        items=[LogRecordPublic.from_row(row) for row in rows],
        next_cursor=next_cursor.encode() if next_cursor else None,
    )


@router.get("/tail", summary="Live tail of new records (text/event-stream)")
async def tail_logs(
    _: Operator,
    request: Request,
    hub: TailHubDep,
    settings: IngestSettingsDep,
    service: _SHORT = None,
    level: Level | None = None,
) -> StreamingResponse:
    events = _tail_events(
        request,
        hub,
        service=service,
        min_level=level.number if level else None,
        keepalive=settings.tail_keepalive_seconds,
        lasting=settings.tail_max_seconds,
    )
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _tail_events(
    request: Request,
    hub: TailHub,
    *,
    service: str | None,
    min_level: int | None,
    keepalive: float,
    lasting: float,
) -> AsyncIterator[bytes]:
    """The tail's events until the server drains or `lasting` seconds have passed, with a
    comment after each `keepalive` seconds without records."""
    subscription = hub.subscribe(service=service, min_level=min_level)
    try:
        # Sent once subscribed: from here on the client misses nothing committed.
        yield b": tail started\n\n"
        quiet_since = time.monotonic()
        ends = quiet_since + lasting
        # Short waits so that a draining server does not wait on an idle stream.
        while not request.app.state.draining:
            left = ends - time.monotonic()
            if left <= 0:
                yield b": tail ended; connect again to go on\n\n"
                return
            records = await subscription.next_records(min(1.0, keepalive, left))
            if records:
                yield b"".join(map(_event, records))
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= keepalive:
                yield b": keep-alive\n\n"
                quiet_since = time.monotonic()
    finally:
        hub.unsubscribe(subscription)


def _event(record: dict[str, Any]) -> bytes:
    return b"id: %s\nevent: log\ndata: %s\n\n" % (record["id"].encode(), orjson.dumps(record))


@router.get("/stats", response_model=LogStats, summary="Counts by service and level")
async def get_log_stats(
    _: Operator,
    store: StoreDep,
    since: BoundedDatetime | None = None,
    until: BoundedDatetime | None = None,
) -> LogStats:
    start = _utc(since) or datetime.now(UTC) - timedelta(days=1)
    counts = await count_records(store.pool, since=start, until=_utc(until))
    by_service: dict[str, int] = {}
    by_level: dict[str, int] = {}
    for entry in counts:
        by_service[entry.service] = by_service.get(entry.service, 0) + entry.count
        name = level_name(entry.level)
        by_level[name] = by_level.get(name, 0) + entry.count
    return LogStats(
        since=start,
        until=_utc(until),
        total=sum(by_service.values()),
        by_service=by_service,
        by_level=by_level,
        counts=[
            LevelCountPublic(service=c.service, level=level_name(c.level), count=c.count)
            for c in counts
        ],
    )

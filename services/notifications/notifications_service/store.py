"""Notifications as rows: enqueue (idempotent), read with attempts, list, replay."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, and_, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from keelson.errors import BadRequest, Conflict, NotFound
from notifications_service import metrics
from notifications_service.models import Attempt, Notification, Status

__all__ = [
    "NewNotification",
    "Queued",
    "decode_cursor",
    "enqueue",
    "enqueue_many",
    "get_attempts",
    "get_notification",
    "list_notifications",
    "replay",
]


@dataclass(frozen=True, slots=True)
class NewNotification:
    requested_by: str
    channel: str
    recipient: str
    owner_id: str | None = None
    template: str | None = None
    subject: str | None = None
    body: str | None = None
    data: dict[str, Any] | None = None
    locale: str = "en"
    category: str = "general"
    transactional: bool = False
    idempotency_key: str | None = None
    source_event_id: str | None = None
    webhook_endpoint_id: uuid.UUID | None = None
    suppressed: bool = False


# Built once: a statement made per call costs more CPU than its round trip.
_TABLE = cast(Table, Notification.__table__)
_INSERT = (
    insert(_TABLE)
    .on_conflict_do_nothing(constraint="uq_notifications_idempotency")
    .returning(_TABLE.c.id, _TABLE.c.status)
)


def _values(new: NewNotification) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "owner_id": new.owner_id,
        "requested_by": new.requested_by,
        "idempotency_key": new.idempotency_key,
        "source_event_id": new.source_event_id,
        "channel": new.channel,
        "recipient": new.recipient,
        "webhook_endpoint_id": new.webhook_endpoint_id,
        "template": new.template,
        "subject": new.subject,
        "body": new.body,
        "data": new.data or {},
        "locale": new.locale,
        "category": new.category,
        "transactional": new.transactional,
        "status": Status.SUPPRESSED if new.suppressed else Status.PENDING,
        "attempts": 0,
    }


@dataclass(frozen=True, slots=True)
class Queued:
    """A notification as enqueued: new, or the earlier one with the same idempotency key."""

    id: uuid.UUID
    status: Status
    created: bool


async def enqueue(db: AsyncSession, new: NewNotification) -> Queued:
    """Insert the notification (not committed); with a key already used, the earlier one.

    Concurrent requests with one key meet at the unique index: one inserts, the others wait
    for its commit and read its row.
    """
    values = _values(new)
    inserted = (await db.execute(_INSERT, values)).first()
    if inserted is not None:
        if new.suppressed:
            metrics.SUPPRESSED(new.channel).inc()
        return Queued(inserted.id, Status(inserted.status), created=True)
    existing = await db.scalar(
        select(Notification).where(
            Notification.requested_by == new.requested_by,
            Notification.idempotency_key == new.idempotency_key,
        )
    )
    assert existing is not None
    if (existing.channel, existing.recipient, existing.template) != (
        new.channel,
        new.recipient,
        new.template,
    ):
        raise Conflict("this idempotency key was used for a different notification")
    return Queued(existing.id, Status(existing.status), created=False)


_INSERT_MANY = (
    insert(_TABLE)
    .on_conflict_do_nothing(constraint="uq_notifications_idempotency")
    .returning(_TABLE.c.channel, _TABLE.c.status)
)


async def enqueue_many(db: AsyncSession, new: Sequence[NewNotification]) -> set[str]:
    """Insert the notifications in one statement (not committed), skipping each whose
    idempotency key was used; the channels of the new ones to send (not suppressed)."""
    if not new:
        return set()
    inserted = (await db.execute(_INSERT_MANY, [_values(n) for n in new])).all()
    channels = set()
    for row in inserted:
        if row.status == Status.SUPPRESSED:
            metrics.SUPPRESSED(row.channel).inc()
        else:
            channels.add(row.channel)
    return channels


async def get_notification(
    db: AsyncSession, *, notification_id: uuid.UUID, viewer: str | None
) -> Notification:
    """The notification if `viewer` owns or requested it (None: an admin sees any); else 404."""
    notification = await db.get(Notification, notification_id)
    if notification is None or (
        viewer is not None and viewer not in (notification.owner_id, notification.requested_by)
    ):
        raise NotFound("no such notification")
    return notification


async def get_attempts(db: AsyncSession, *, notification_id: uuid.UUID) -> list[Attempt]:
    rows = await db.scalars(
        select(Attempt).where(Attempt.notification_id == notification_id).order_by(Attempt.id)
    )
    return list(rows)


def encode_cursor(notification: Notification) -> str:
    raw = f"{notification.created_at.isoformat()}|{notification.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, _, ident = raw.partition("|")
        return datetime.fromisoformat(stamp), uuid.UUID(ident)
    except ValueError:
        raise BadRequest("invalid cursor") from None


async def list_notifications(
    db: AsyncSession,
    *,
    viewer: str | None,
    status: Status | None = None,
    channel: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[Notification], str | None]:
    """Newest first, keyset-paginated on (created_at, id); `viewer` None lists everyone's."""
    query = select(Notification)
    if viewer is not None:
        query = query.where(
            or_(Notification.owner_id == viewer, Notification.requested_by == viewer)
        )
    if status is not None:
        query = query.where(Notification.status == status)
    if channel is not None:
        query = query.where(Notification.channel == channel)
    if cursor is not None:
        created_at, ident = decode_cursor(cursor)
        query = query.where(
            or_(
                Notification.created_at < created_at,
                and_(Notification.created_at == created_at, Notification.id < ident),
            )
        )
    rows = list(
        await db.scalars(
            query.order_by(Notification.created_at.desc(), Notification.id.desc()).limit(limit + 1)
        )
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1]) if more and rows else None


async def replay(db: AsyncSession, *, notification_id: uuid.UUID) -> Notification:
    """A dead-lettered or failed notification back in the queue, with fresh attempts."""
    result = (
        await db.execute(
            update(Notification)
            .where(
                Notification.id == notification_id,
                Notification.status.in_([Status.DEAD_LETTER, Status.FAILED]),
            )
            .values(
                status=Status.PENDING,
                attempts=0,
                next_attempt_at=func.now(),
                lease_until=None,
                updated_at=func.now(),
            )
            .returning(Notification.id)
        )
    ).first()
    if result is None:
        existing = await db.get(Notification, notification_id)
        if existing is None:
            raise NotFound("no such notification")
        raise Conflict(
            f"only dead-lettered or failed notifications are replayed, not {existing.status}"
        )
    notification = await db.get(Notification, notification_id, populate_existing=True)
    assert notification is not None
    return notification

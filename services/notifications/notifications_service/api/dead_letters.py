"""Dead letters: notifications that ran out of attempts, for an admin to read and replay."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from notifications_service.deps import AdminUser, SessionDep
from notifications_service.models import Channel, Status
from notifications_service.schemas import NotificationPage, NotificationPublic
from notifications_service.store import list_notifications

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/notifications/dead-letters", tags=["notifications"])


@router.get("")
async def read_dead_letters(
    _: AdminUser,
    db: SessionDep,
    channel: Channel | None = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
) -> NotificationPage:
    rows, next_cursor = await list_notifications(
        db, viewer=None, status=Status.DEAD_LETTER, channel=channel, cursor=cursor, limit=limit
    )
    return NotificationPage(
        items=[NotificationPublic.model_validate(r) for r in rows], next_cursor=next_cursor
    )

"""Send a notification, read one with its attempts, list the caller's, replay a dead letter."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from keelson.auth import CurrentUser, Principal
from notifications_service.deps import AdminUser, Config, Renderer, Sender, SessionDep, Worker
from notifications_service.intake import submit_request
from notifications_service.models import Channel, Notification, Status
from notifications_service.schemas import (
    AttemptPublic,
    NotificationAccepted,
    NotificationCreate,
    NotificationDetail,
    NotificationPage,
    NotificationPublic,
)
from notifications_service.store import get_attempts, get_notification, list_notifications, replay

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/notifications", tags=["notifications"])


def _viewer(principal: Principal) -> str | None:
    """Whose notifications the caller sees: their own, or everyone's for an admin."""
    return None if principal.has_role("admin") else principal.user_id


async def _detail(db: SessionDep, notification: Notification) -> NotificationDetail:
    attempts = await get_attempts(db, notification_id=notification.id)
    return NotificationDetail(
        **NotificationPublic.model_validate(notification).model_dump(),
        attempt_log=[AttemptPublic.model_validate(a) for a in attempts],
    )


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    responses={200: {"model": NotificationAccepted, "description": "an earlier request's"}},
)
async def create_notification(
    body: NotificationCreate,
    principal: Sender,
    db: SessionDep,
    settings: Config,
    renderer: Renderer,
    worker: Worker,
    response: Response,
) -> NotificationAccepted:
    queued = await submit_request(
        db, principal=principal, request=body, settings=settings, renderer=renderer
    )
    accepted = NotificationAccepted(id=queued.id, status=queued.status)
    await db.commit()
    if queued.created:
        worker.wake([body.channel])
    else:
        response.headers["Idempotent-Replayed"] = "true"
    return accepted


@router.get("")
async def read_notifications(
    principal: CurrentUser,
    db: SessionDep,
    status: Status | None = None,
    channel: Channel | None = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
) -> NotificationPage:
    rows, next_cursor = await list_notifications(
        db, viewer=_viewer(principal), status=status, channel=channel, cursor=cursor, limit=limit
    )
    return NotificationPage(
        items=[NotificationPublic.model_validate(r) for r in rows], next_cursor=next_cursor
    )


@router.get("/{notification_id}")
async def read_notification(
    notification_id: uuid.UUID, principal: CurrentUser, db: SessionDep
) -> NotificationDetail:
    notification = await get_notification(
        db, notification_id=notification_id, viewer=_viewer(principal)
    )
    return await _detail(db, notification)


@router.post("/{notification_id}/retry", status_code=status.HTTP_202_ACCEPTED)
async def retry_notification(
    notification_id: uuid.UUID, _: AdminUser, db: SessionDep, worker: Worker
) -> NotificationAccepted:
    notification = await replay(db, notification_id=notification_id)
    accepted = NotificationAccepted(id=notification.id, status=Status(notification.status))
    await db.commit()
    worker.wake([notification.channel])
    return accepted

"""The caller's webhook endpoints: register (secret shown once), list, delete, test."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, status

from keelson.auth import CurrentUser
from keelson.errors import Unprocessable
from notifications_service.deps import Config, SessionDep, Worker
from notifications_service.models import Channel
from notifications_service.recipients import (
    create_endpoint,
    delete_endpoint,
    get_endpoint,
    list_endpoints,
)
from notifications_service.schemas import (
    NotificationAccepted,
    WebhookCreate,
    WebhookCreated,
    WebhookPublic,
)
from notifications_service.ssrf import BlockedTarget, resolve_target
from notifications_service.store import NewNotification, enqueue

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/notifications/webhooks", tags=["webhooks"])


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_webhook(
    body: WebhookCreate, principal: CurrentUser, db: SessionDep, settings: Config
) -> WebhookCreated:
    try:
        await resolve_target(body.url, allow_networks=settings.webhook.allow_networks)
    except BlockedTarget as exc:
        raise Unprocessable(f"webhook URL refused: {exc}") from None
    endpoint = await create_endpoint(
        db,
        owner_id=principal.user_id,
        url=body.url,
        description=body.description,
        limit=settings.webhook.max_endpoints_per_user,
    )
    created = WebhookCreated(
        id=endpoint.id,
        url=endpoint.url,
        description=endpoint.description,
        created_at=endpoint.created_at,
        secret=endpoint.secret,
    )
    await db.commit()
    return created


@router.get("")
async def read_webhooks(principal: CurrentUser, db: SessionDep) -> list[WebhookPublic]:
    endpoints = await list_endpoints(db, owner_id=principal.user_id)
    return [WebhookPublic.model_validate(e) for e in endpoints]


@router.delete("/{endpoint_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_webhook(endpoint_id: uuid.UUID, principal: CurrentUser, db: SessionDep) -> None:
    await delete_endpoint(db, endpoint_id=endpoint_id, owner_id=principal.user_id)
    await db.commit()


@router.post("/{endpoint_id}/test", status_code=status.HTTP_202_ACCEPTED)
async def test_webhook(
    endpoint_id: uuid.UUID, principal: CurrentUser, db: SessionDep, worker: Worker
) -> NotificationAccepted:
    endpoint = await get_endpoint(db, endpoint_id=endpoint_id, owner_id=principal.user_id)
    queued = await enqueue(
        db,
        NewNotification(
            requested_by=principal.user_id,
            owner_id=principal.user_id,
            channel=Channel.WEBHOOK,
            recipient=endpoint.url,
            webhook_endpoint_id=endpoint.id,
            template="webhook_test",
            category="test",
            transactional=True,
        ),
    )
    accepted = NotificationAccepted(id=queued.id, status=queued.status)
    await db.commit()
    worker.wake([Channel.WEBHOOK])
    return accepted

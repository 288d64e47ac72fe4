"""Payment intents: create (idempotent), read, list, cancel; the ledger for admins."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from keelson.errors import Unprocessable
from payments_service.deps import (
    AdminUser,
    Config,
    CurrentUser,
    IdempotencyKey,
    Provider,
    SessionDep,
)
from payments_service.intents import cancel_intent, create_intent, find_intent, list_intents
from payments_service.ledger import entries
from payments_service.schemas import IntentCreate, IntentPage, IntentPublic, LedgerEntryPublic
from payments_service.states import IntentStatus

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/payments/intents", tags=["intents"])


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_payment_intent(
    body: IntentCreate,
    user: CurrentUser,
    db: SessionDep,
    provider: Provider,
    config: Config,
    idempotency_key: IdempotencyKey,
    response: Response,
) -> IntentPublic:
    """201 when created; the same key and body again answer the same intent with 200."""
    if body.currency not in config.currencies:
        raise Unprocessable(f"currency {body.currency!r} is not accepted")
    if body.amount > config.max_amount:
        raise Unprocessable(f"amount must be at most {config.max_amount}")
    intent, created = await create_intent(
        db, provider, principal=user, body=body, idempotency_key=idempotency_key
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return IntentPublic.of(intent)


@router.get("")
async def read_payment_intents(
    user: CurrentUser,
    db: SessionDep,
    status_: Annotated[IntentStatus | None, Query(alias="status")] = None,
    cursor: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> IntentPage:
    """The caller's intents (an admin's: everyone's), newest first, by cursor."""
    page, next_cursor = await list_intents(db, user, status=status_, after=cursor, limit=limit)
    return IntentPage(
        items=[IntentPublic.of(i) for i in page],
        next_cursor=str(next_cursor) if next_cursor is not None else None,
    )


@router.get("/{intent_id}")
async def read_payment_intent(
    intent_id: uuid.UUID, user: CurrentUser, db: SessionDep
) -> IntentPublic:
    return IntentPublic.of(await find_intent(db, user, intent_id))


@router.post("/{intent_id}/cancel")
async def cancel_payment_intent(
    intent_id: uuid.UUID, user: CurrentUser, db: SessionDep, provider: Provider
) -> IntentPublic:
    return IntentPublic.of(await cancel_intent(db, provider, principal=user, intent_id=intent_id))


@router.get("/{intent_id}/events")
async def read_payment_intent_events(
    intent_id: uuid.UUID, admin: AdminUser, db: SessionDep
) -> list[LedgerEntryPublic]:
    """The append-only ledger of the payment: every state change and provider event."""
    intent = await find_intent(db, admin, intent_id)
    return [LedgerEntryPublic.of(e) for e in await entries(db, intent_id=intent.id)]

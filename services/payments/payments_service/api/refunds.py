"""Refunds of a payment intent."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status

from payments_service.deps import CurrentUser, IdempotencyKey, Provider, SessionDep
from payments_service.refunds import refund_intent
from payments_service.schemas import RefundCreate, RefundPublic

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/payments/intents", tags=["refunds"])


@router.post("/{intent_id}/refunds", status_code=status.HTTP_201_CREATED)
async def create_refund(
    intent_id: uuid.UUID,
    body: RefundCreate,
    user: CurrentUser,
    db: SessionDep,
    provider: Provider,
    idempotency_key: IdempotencyKey,
    response: Response,
) -> RefundPublic:
    """Partial refunds add up; their sum never passes the captured amount (409)."""
    refund, created = await refund_intent(
        db,
        provider,
        principal=user,
        intent_id=intent_id,
        body=body,
        idempotency_key=idempotency_key,
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return RefundPublic.of(refund)

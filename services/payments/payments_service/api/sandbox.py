"""Test mode only: pay or decline a sandbox intent, as a card would at Stripe."""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from payments_service.deps import AdminUser, Sandbox, SessionDep
from payments_service.intents import find_intent
from payments_service.schemas import IntentPublic
from payments_service.webhooks import handle_event

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/payments/sandbox/intents", tags=["sandbox"])


async def _complete(
    db: SessionDep, sandbox: Sandbox, admin: AdminUser, intent_id: uuid.UUID, *, succeed: bool
) -> IntentPublic:
    intent = await find_intent(db, admin, intent_id)
    await db.commit()  # the read's transaction ends; the event gets one of its own
    event = await sandbox.complete_intent(intent.provider_id, succeed=succeed)
    # The event Stripe would have sent, through the webhook's own handling code.
    await handle_event(db, event, source="sandbox")
    await db.refresh(intent)
    await db.commit()
    return IntentPublic.of(intent)


@router.post("/{intent_id}/succeed")
async def succeed_sandbox_intent(
    intent_id: uuid.UUID, admin: AdminUser, db: SessionDep, sandbox: Sandbox
) -> IntentPublic:
    return await _complete(db, sandbox, admin, intent_id, succeed=True)


@router.post("/{intent_id}/fail")
async def fail_sandbox_intent(
    intent_id: uuid.UUID, admin: AdminUser, db: SessionDep, sandbox: Sandbox
) -> IntentPublic:
    return await _complete(db, sandbox, admin, intent_id, succeed=False)

"""Refunds: summed per payment and never above what was captured, also when they race."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keelson import monitor
from keelson.auth import Principal
from keelson.errors import Conflict, IdempotencyConflict
from keelson.events import RefundSucceeded
from keelson.payment import PaymentProvider
from payments_service.idempotency import fingerprint, provider_key
from payments_service.intents import find_intent
from payments_service.lifecycle import Changes, move
from payments_service.metrics import REFUNDS
from payments_service.models import Refund
from payments_service.schemas import RefundCreate
from payments_service.states import REFUNDABLE, IntentStatus, refund_status

__all__ = ["refund_intent"]


async def refund_intent(
    db: AsyncSession,
    provider: PaymentProvider,
    *,
    principal: Principal,
    intent_id: uuid.UUID,
    body: RefundCreate,
    idempotency_key: str,
) -> tuple[Refund, bool]:
    """The refund for this key and whether it was made now.

    The intent's row is locked first, so refunds of one payment run one at a time: the
    second of two racing refunds sees the first one's amount and is refused if the sum
    would pass the captured amount. The provider is asked under that lock with a key
    derived from the client's, so a retry never refunds twice.
    """
    digest = fingerprint(body.model_dump(mode="json"))
    async with db.begin():
        intent = await find_intent(db, principal, intent_id, for_update=True)
        existing = await db.scalar(
            select(Refund).where(
                Refund.intent_id == intent.id, Refund.idempotency_key == idempotency_key
            )
        )
        if existing is not None:
            if existing.request_hash != digest:
                raise IdempotencyConflict(
                    "this Idempotency-Key was used for a refund with another body",
                    conflicting_refund=str(existing.id),
                )
            return existing, False
        if IntentStatus(intent.status) not in REFUNDABLE:
            raise Conflict(f"a payment intent in status {intent.status} can't be refunded")
        left = intent.amount_received - intent.amount_refunded
        amount = body.amount if body.amount is not None else left
        if amount <= 0 or amount > left:
            raise Conflict(
                f"the refund of {amount} exceeds the {left} left to refund", refundable=left
            )
        made = await provider.create_refund(
            intent_id=intent.provider_id,
            amount=amount,
            reason=body.reason.value if body.reason else None,
            metadata={"keelson_intent_id": str(intent.id)},
            idempotency_key=provider_key("refund", intent.provider_id, idempotency_key),
        )
        refund = Refund(
            intent_id=intent.id,
            provider_id=made.id,
            amount=amount,
            reason=body.reason.value if body.reason else None,
            status=made.status,
            idempotency_key=idempotency_key,
            request_hash=digest,
        )
        db.add(refund)
        await db.flush()
        changes = Changes(intent)
        changes.set(amount_refunded=intent.amount_refunded + amount)
        changes.record(
            kind="refund_created",
            source="api",
            amount=amount,
            data={"refund_id": str(refund.id), "provider_id": made.id, "by": principal.user_id},
        )
        move(
            changes,
            refund_status(received=intent.amount_received, refunded=intent.amount_refunded),
            source="api",
            data={"refund_id": str(refund.id)},
        )
        changes.announce(
            RefundSucceeded(
                refund_id=str(refund.id),
                payment_id=str(intent.id),
                user_id=intent.user_id,
                amount=amount,
                currency=intent.currency,
            )
        )
        await changes.write(db)
    monitor.add_breadcrumb(
        "refund created", category="payment", intent_id=str(intent_id), amount=refund.amount
    )
    REFUNDS.labels(refund.status).inc()
    return refund, True

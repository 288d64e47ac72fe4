"""Moving an intent between states: the one path that writes the ledger row and the event."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from keelson import monitor
from keelson.events import Event, PaymentCanceled, PaymentFailed, PaymentSucceeded
from keelson.outbox import add_to_outbox
from payments_service.ledger import record
from payments_service.metrics import INTENT_TRANSITIONS
from payments_service.models import Intent
from payments_service.states import IntentStatus, can_move

__all__ = ["move"]


def _event_for(intent: Intent, status: IntentStatus, reason: str | None) -> Event | None:
    common: dict[str, Any] = {
        "payment_id": str(intent.id),
        "user_id": intent.user_id,
        "amount": intent.amount,
        "currency": intent.currency,
    }
    if status is IntentStatus.SUCCEEDED:
        return PaymentSucceeded(**common, provider_ref=intent.provider_id)
    if status is IntentStatus.FAILED:
        return PaymentFailed(**common, reason=reason)
    if status is IntentStatus.CANCELED:
        return PaymentCanceled(**common)
    return None  # refunds announce themselves with the refund (RefundSucceeded)


async def move(
    db: AsyncSession,
    intent: Intent,
    target: IntentStatus,
    *,
    source: str,
    event_at: int | None = None,
    provider_event_id: str | None = None,
    reason: str | None = None,
    data: dict[str, Any] | None = None,
) -> bool:
    """Move `intent` to `target` if the machine allows it and the news is not older.

    `event_at` is the provider's time for the news (a webhook's `created`); news older
    than what was already applied never moves the state. Returns whether it moved; the
    ledger row and the outbox event are in the caller's transaction.
    """
    current = IntentStatus(intent.status)
    if target is current or not can_move(current, target):
        return False
    if (
        event_at is not None
        and intent.last_event_at is not None
        and event_at < intent.last_event_at
    ):
        return False
    intent.status = target.value
    if event_at is not None:
        intent.last_event_at = max(event_at, intent.last_event_at or 0)
    record(
        db,
        intent_id=intent.id,
        kind="status_changed",
        source=source,
        from_status=current.value,
        to_status=target.value,
        amount=intent.amount,
        provider_event_id=provider_event_id,
        data={**(data or {}), **({"reason": reason} if reason else {})},
    )
    event = _event_for(intent, target, reason)
    if event is not None:
        await add_to_outbox(db, event)
    monitor.add_breadcrumb(
        "payment intent status changed",
        category="payment",
        intent_id=str(intent.id),
        from_status=current.value,
        to_status=target.value,
        source=source,
    )
    INTENT_TRANSITIONS.labels(target.value).inc()
    return True

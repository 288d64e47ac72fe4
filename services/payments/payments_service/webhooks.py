"""Provider events (Stripe webhooks, sandbox completions, reconciliation) applied to intents.

Each event is recorded as processed in the same transaction as its effect, so a replay
or a concurrent second delivery finds the record (the second waits on the first's
uncommitted row) and changes nothing. Events may arrive in any order: `move` refuses
news older than what was applied and any move the state machine does not allow.
"""

from __future__ import annotations

import functools
import time
from enum import StrEnum
from typing import Any

from sqlalchemy import Select, String, bindparam, exists, literal_column, select
from sqlalchemy.ext.asyncio import AsyncSession

from keelson.events import DisputeOpened, RefundSucceeded
from keelson.outbox import mark_processed, processed_insert, processed_parameters
from keelson.payment import ProviderEvent
from payments_service.lifecycle import Changes, move
from payments_service.metrics import WEBHOOK_EVENTS, WEBHOOK_LAG
from payments_service.models import Intent
from payments_service.states import REFUNDABLE, IntentStatus, refund_status

__all__ = ["HANDLED_EVENTS", "Outcome", "handle_event"]

WEBHOOK_GROUP = "payments.provider_events"
_INTENT_EVENTS = {
    "payment_intent.succeeded": IntentStatus.SUCCEEDED,
    "payment_intent.payment_failed": IntentStatus.FAILED,
    "payment_intent.canceled": IntentStatus.CANCELED,
    "payment_intent.processing": IntentStatus.PROCESSING,
}
HANDLED_EVENTS = frozenset({*_INTENT_EVENTS, "charge.refunded", "charge.dispute.created"})


class Outcome(StrEnum):
    APPLIED = "applied"  # the state moved
    RECORDED = "recorded"  # in the ledger, the state unchanged (already there)
    STALE = "stale"  # older than the state, or a move the machine refuses
    DUPLICATE = "duplicate"
    UNKNOWN_INTENT = "unknown_intent"
    IGNORED = "ignored"  # a type this service does not handle


def _intent_ref(event: ProviderEvent) -> str | None:
    obj = event.object
    if event.type.startswith("payment_intent."):
        return str(obj.get("id")) if obj.get("id") else None
    ref = obj.get("payment_intent")
    return ref if isinstance(ref, str) else None


async def handle_event(db: AsyncSession, event: ProviderEvent, *, source: str) -> Outcome:
    """Apply `event` in one transaction of `db` (which must not be in one yet).

    Two statements: the claim (the processed-event row and the intent's row lock, in one)
    and the write (`Changes.write`: the intent, its ledger rows and outbox events).
    """
    async with db.begin():
        outcome = await _apply(db, event, source=source)
    WEBHOOK_EVENTS.labels(event.type if event.type in HANDLED_EVENTS else "other", outcome).inc()
    WEBHOOK_LAG.observe(max(0.0, time.time() - event.created))
    return outcome


@functools.cache
def _claim_statement() -> Select[Intent]:
    fresh = processed_insert().cte("fresh")
    return (
        select(Intent)
        .where(
            Intent.provider_id == bindparam("ref", type_=String()),
            select(literal_column("1")).select_from(fresh).exists(),
        )
        .with_for_update(of=Intent)
        .execution_options(populate_existing=True)
    )


async def _claim(db: AsyncSession, event: ProviderEvent, ref: str | None) -> Intent | Outcome:
    """Mark `event` processed and lock its intent, in one statement.

    The processed-event INSERT is a CTE the intent's SELECT depends on, so it runs first:
    a concurrent delivery of the same event waits there for the first one's commit, then
    finds the row and locks nothing. No intent row back means a duplicate or no intent.
    """
    if ref is None:
        fresh = await mark_processed(db, event_id=event.id, group=WEBHOOK_GROUP)
        return Outcome.UNKNOWN_INTENT if fresh else Outcome.DUPLICATE
    intent = await db.scalar(
        _claim_statement(),
        {"ref": ref, **processed_parameters(event_id=event.id, group=WEBHOOK_GROUP)},
    )
    if intent is not None:
        return intent
    known = await db.scalar(select(exists().where(Intent.provider_id == ref)))
    return Outcome.DUPLICATE if known else Outcome.UNKNOWN_INTENT


async def _apply(db: AsyncSession, event: ProviderEvent, *, source: str) -> Outcome:
    if event.type not in HANDLED_EVENTS:
        return Outcome.IGNORED
    claimed = await _claim(db, event, _intent_ref(event))
    if isinstance(claimed, Outcome):
        return claimed
    intent = claimed
    before = intent.status
    changes = Changes(intent)
    if event.type in _INTENT_EVENTS:
        moved = _intent_event(changes, event, source=source)
    elif event.type == "charge.refunded":
        moved = _charge_refunded(changes, event, source=source)
    else:
        moved = _dispute_created(changes, event, source=source)
    changes.record(
        kind="provider_event",
        source=source,
        from_status=before,
        to_status=intent.status,
        provider_event_id=event.id,
        data={"type": event.type, "created": event.created, "outcome": moved.value},
    )
    await changes.write(db)
    return moved


def _intent_event(changes: Changes, event: ProviderEvent, *, source: str) -> Outcome:
    intent = changes.intent
    target = _INTENT_EVENTS[event.type]
    if intent.status == target:
        return Outcome.RECORDED
    obj = event.object
    error: dict[str, Any] = obj.get("last_payment_error") or {}
    moved = move(
        changes,
        target,
        source=source,
        event_at=event.created,
        provider_event_id=event.id,
        reason=error.get("decline_code") or error.get("code"),
    )
    if not moved:
        return Outcome.STALE
    if target is IntentStatus.SUCCEEDED:
        # The captured amount is what refunds are bounded by (read under the same row lock).
        received = int(obj.get("amount_received") or obj.get("amount") or intent.amount)
        changes.set(amount_received=min(received, intent.amount))
    return Outcome.APPLIED


def _charge_refunded(changes: Changes, event: ProviderEvent, *, source: str) -> Outcome:
    """A refund seen by the provider; one made through this API is already counted."""
    intent = changes.intent
    total = int(event.object.get("amount_refunded") or 0)
    if total <= intent.amount_refunded or IntentStatus(intent.status) not in REFUNDABLE:
        return Outcome.RECORDED
    extra = min(total, intent.amount_received) - intent.amount_refunded
    changes.set(amount_refunded=intent.amount_refunded + extra)
    # No `event_at`: the refunded total only grows, so the status it gives is never out
    # of date, even when the event is older than the last one applied.
    move(
        changes,
        refund_status(received=intent.amount_received, refunded=intent.amount_refunded),
        source=source,
        provider_event_id=event.id,
    )
    changes.announce(
        RefundSucceeded(
            refund_id=str(event.object.get("id")),
            payment_id=str(intent.id),
            user_id=intent.user_id,
            amount=extra,
            currency=intent.currency,
        )
    )
    return Outcome.APPLIED


def _dispute_created(changes: Changes, event: ProviderEvent, *, source: str) -> Outcome:
    intent = changes.intent
    obj = event.object
    changes.record(
        kind="dispute_opened",
        source=source,
        amount=int(obj.get("amount") or 0),
        provider_event_id=event.id,
        data={"dispute_id": str(obj.get("id")), "reason": obj.get("reason")},
    )
    changes.announce(
        DisputeOpened(
            dispute_id=str(obj.get("id")),
            payment_id=str(intent.id),
            user_id=intent.user_id,
            amount=int(obj.get("amount") or 0),
            currency=str(obj.get("currency") or intent.currency),
            reason=obj.get("reason"),
        )
    )
    return Outcome.RECORDED

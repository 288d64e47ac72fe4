"""Provider events (Stripe webhooks, sandbox completions, reconciliation) applied to intents.

Each event is recorded as processed in the same transaction as its effect, so a replay
or a concurrent second delivery finds the record (the second waits on the first's
uncommitted row) and changes nothing. Events may arrive in any order: `move` refuses
news older than what was applied and any move the state machine does not allow.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import ARRAY, MetaData, Select, String, bindparam, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from keelson.events import DisputeOpened, RefundSucceeded
from keelson.outbox import outbox_tables
from keelson.payment import ProviderEvent
from payments_service.lifecycle import Changes, move, write_changes
from payments_service.metrics import WEBHOOK_EVENTS, WEBHOOK_LAG
from payments_service.models import Intent
from payments_service.states import REFUNDABLE, IntentStatus, refund_status

__all__ = ["HANDLED_EVENTS", "Delivery", "Outcome", "handle_event", "handle_events"]

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


@dataclass(frozen=True, slots=True)
class Delivery:
    """A verified provider event and where it came from (`webhook`, `sandbox`, ...)."""

    event: ProviderEvent
    source: str


async def handle_event(db: AsyncSession, event: ProviderEvent, *, source: str) -> Outcome:
    """Apply `event` in one transaction of `db` (which must not be in one yet)."""
    (outcome,) = await handle_events(db, [Delivery(event, source)])
    return outcome


async def handle_events(db: AsyncSession, deliveries: Sequence[Delivery]) -> list[Outcome]:
    """Apply `deliveries`, in their order, in one transaction of `db` (not in one yet).

    Two statements whatever their number: the claim (the processed-event rows and the
    intents' row locks, in one) and the write (`write_changes`: the intents, their
    ledger rows and outbox events). An error anywhere rolls back all of them.
    """
    async with db.begin():
        outcomes = await _apply(db, deliveries)
    now = time.time()
    for delivery, outcome in zip(deliveries, outcomes, strict=True):
        event = delivery.event
        WEBHOOK_EVENTS.labels(
            event.type if event.type in HANDLED_EVENTS else "other", outcome
        ).inc()
        WEBHOOK_LAG.observe(max(0.0, now - event.created))
    return outcomes


@functools.cache
def _claim_statement() -> Select[str, Intent]:
    """Mark the events processed and lock their intents, in one statement.

    The processed-event INSERT is a CTE the intents' locking SELECT depends on, so it
    runs first: a concurrent delivery of the same event waits there for the first one's
    commit, then finds the row and locks nothing. A row back per event claimed now,
    with its intent or none; no row means an event processed before. Both take their
    locks in a fixed order (event id, intent id), so two batches cannot deadlock.
    """
    processed = outbox_tables(MetaData()).processed_events
    pairs = select(
        func.unnest(bindparam("event_ids", type_=ARRAY(String()))).label("event_id"),
        func.unnest(bindparam("refs", type_=ARRAY(String()))).label("ref"),
    ).cte("pairs")
    fresh = (
        insert(processed)
        .from_select(
            ["event_id", "group"],
            select(pairs.c.event_id, bindparam("group", type_=String())).order_by(pairs.c.event_id),
        )
        .on_conflict_do_nothing()
        .returning(processed.c.event_id)
        .cte("fresh")
    )
    refs = select(pairs.c.ref).join_from(pairs, fresh, fresh.c.event_id == pairs.c.event_id)
    locked = (
        select(Intent)
        .where(Intent.provider_id.in_(refs))
        .order_by(Intent.id)
        .with_for_update()
        .cte("locked")
    )
    intent = aliased(Intent, locked)
    return (
        select(fresh.c.event_id, intent)
        .join_from(fresh, pairs, pairs.c.event_id == fresh.c.event_id)
        .outerjoin(locked, locked.c.provider_id == pairs.c.ref)
        .execution_options(populate_existing=True)
    )


async def _claim(db: AsyncSession, events: Sequence[ProviderEvent]) -> dict[str, Intent | None]:
    """The events (of distinct ids) claimed now, each with its locked intent or none."""
    rows = await db.execute(
        _claim_statement(),
        {
            "event_ids": [event.id for event in events],
            "refs": [_intent_ref(event) for event in events],
            "group": WEBHOOK_GROUP,
        },
    )
    return {event_id: intent for event_id, intent in rows}


async def _apply(db: AsyncSession, deliveries: Sequence[Delivery]) -> list[Outcome]:
    outcomes: list[Outcome] = [Outcome.IGNORED] * len(deliveries)
    first: dict[str, int] = {}  # event id -> its first delivery here; later ones are copies
    for i, delivery in enumerate(deliveries):
        event_id = delivery.event.id
        if delivery.event.type not in HANDLED_EVENTS:
            continue
        if event_id in first:
            outcomes[i] = Outcome.DUPLICATE
        else:
            first[event_id] = i
    if not first:
        return outcomes
    claimed = await _claim(db, [deliveries[i].event for i in first.values()])
    changes: dict[uuid.UUID, Changes] = {}
    for event_id, i in first.items():
        if event_id not in claimed:
            outcomes[i] = Outcome.DUPLICATE
            continue
        intent = claimed[event_id]
        if intent is None:
            outcomes[i] = Outcome.UNKNOWN_INTENT
            continue
        if intent.id not in changes:
            changes[intent.id] = Changes(intent)
        outcomes[i] = _apply_one(changes[intent.id], deliveries[i])
    await write_changes(db, list(changes.values()))
    return outcomes


def _apply_one(changes: Changes, delivery: Delivery) -> Outcome:
    """One event on its claimed intent, after those before it in the same transaction."""
    event, source = delivery.event, delivery.source
    intent = changes.intent
    before = intent.status
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

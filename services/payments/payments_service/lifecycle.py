"""Moving an intent between states: the one path that writes the ledger row and the event.

A `Changes` collects what one transaction does to one intent (new column values, ledger
rows, outbox events) and `write_changes` sends those of any number of intents as one
statement: an UPDATE, an INSERT into the ledger and one into the outbox, each over
unnested arrays, as CTEs of a single SELECT. The intent
object in the session is given the new values as already committed ones, so the
session's flush does not write them a second time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Table, TextClause, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from keelson import monitor
from keelson.events import (
    Event,
    PaymentCanceled,
    PaymentFailed,
    PaymentProcessing,
    PaymentSucceeded,
)
from keelson.outbox import outbox_parameters
from payments_service.models import Intent, LedgerEntry
from payments_service.states import IntentStatus, can_move

__all__ = ["Changes", "move", "write_changes"]

_INTENTS = cast(Table, Intent.__table__)
_LEDGER = cast(Table, LedgerEntry.__table__)


class Changes:
    """The writes of one transaction to `intent`, sent together by `write`."""

    def __init__(self, intent: Intent) -> None:
        self.intent = intent
        self.values: dict[str, Any] = {}
        self.ledger: list[dict[str, Any]] = []
        self.events: list[Event] = []

    def set(self, **values: Any) -> None:
        """New column values of the intent (attribute names of `Intent`, of `_MUTABLE`)."""
        unknown = values.keys() - _MUTABLE
        if unknown:
            raise ValueError(f"not a column a change may set: {sorted(unknown)}")
        self.values.update(values)
        for name, value in values.items():
            set_committed_value(self.intent, name, value)

    def record(
        self,
        *,
        kind: str,
        source: str,
        from_status: str | None = None,
        to_status: str | None = None,
        amount: int | None = None,
        provider_event_id: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        """A ledger row about this intent, written with the change it describes."""
        self.ledger.append(
            {
                "intent_id": self.intent.id,
                "kind": kind,
                "source": source,
                "from_status": from_status,
                "to_status": to_status,
                "amount": amount,
                "provider_event_id": provider_event_id,
                "data": data or {},
            }
        )

    def announce(self, event: Event) -> None:
        """An outbox event, relayed to the bus after the commit."""
        self.events.append(event)

    async def write(self, db: AsyncSession) -> None:
        """Send everything collected in one statement of `db`'s transaction, then forget it."""
        await write_changes(db, [self])


# The columns a `Changes` may set: each is NOT NULL, so NULL in the statement's arrays
# means "unchanged" (COALESCE keeps the row's value).
_MUTABLE = ("status", "last_event_at", "amount_received", "amount_refunded")
_LEDGER_COLUMNS = (
    "intent_id",
    "kind",
    "source",
    "from_status",
    "to_status",
    "amount",
    "provider_event_id",
    "data",
)


def _write_statement() -> TextClause:
    """One statement for any number of intents, ledger rows and outbox events.

    Arrays unnested, so its text never changes with the shape (prepared once per
    connection); the ledger and the outbox take their rows in the order they were
    recorded, so the rows' ids follow it.
    """
    intents, ledger = _INTENTS.fullname, _LEDGER.fullname
    updates = ", ".join(f"{c} = COALESCE(v.{c}, i.{c})" for c in _MUTABLE)
    ledger_columns = ", ".join(_LEDGER_COLUMNS)
    return text(
        f"""
        WITH moved AS (
            UPDATE {intents} AS i SET {updates}, updated_at = now()
            FROM unnest(CAST(:ids AS uuid[]), CAST(:status AS text[]),
                        CAST(:last_event_at AS bigint[]), CAST(:amount_received AS bigint[]),
                        CAST(:amount_refunded AS bigint[]))
                AS v(id, {", ".join(_MUTABLE)})
            WHERE i.id = v.id
            RETURNING i.id, i.updated_at
        ), recorded AS (
            INSERT INTO {ledger} ({ledger_columns})
            SELECT intent_id, kind, source, from_status, to_status, amount, provider_event_id,
                   CAST(data AS jsonb)
            FROM unnest(CAST(:l_intent_id AS uuid[]), CAST(:l_kind AS text[]),
                        CAST(:l_source AS text[]), CAST(:l_from_status AS text[]),
                        CAST(:l_to_status AS text[]), CAST(:l_amount AS bigint[]),
                        CAST(:l_provider_event_id AS text[]), CAST(:l_data AS text[]))
                WITH ORDINALITY AS l({ledger_columns}, n)
            ORDER BY n
            RETURNING 1
        ), announced AS (
            INSERT INTO outbox (topic, payload)
            SELECT topic, CAST(payload AS jsonb)
            FROM unnest(CAST(:topic AS text[]), CAST(:payload AS text[]))
                WITH ORDINALITY AS o(topic, payload, n)
            ORDER BY n
            RETURNING 1
        )
        SELECT id, updated_at FROM moved
        """  # noqa: S608 (only this module's own table and column names are formatted in)
    )


_WRITE = _write_statement()


async def write_changes(db: AsyncSession, all_changes: Sequence[Changes]) -> None:
    """Send the changes of any number of intents in one statement of `db`'s transaction."""
    moved = [c for c in all_changes if c.values]
    rows = [row for c in all_changes for row in c.ledger]
    events = [event for c in all_changes for event in c.events]
    if not (moved or rows or events):
        return
    parameters: dict[str, Any] = {"ids": [c.intent.id for c in moved]}
    for name in _MUTABLE:
        parameters[name] = [c.values.get(name) for c in moved]
    for name in _LEDGER_COLUMNS:
        parameters[f"l_{name}"] = [row[name] for row in rows]
    parameters["l_data"] = [json.dumps(row["data"]) for row in rows]
    announced = outbox_parameters(db, events)
    parameters["topic"] = [announced[f"outbox_topic_{i}"] for i in range(len(events))]
    parameters["payload"] = [
        json.dumps(announced[f"outbox_payload_{i}"]) for i in range(len(events))
    ]
    result = await db.execute(_WRITE, parameters)
    by_id = {c.intent.id: c.intent for c in moved}
    for intent_id, updated_at in result:
        set_committed_value(by_id[intent_id], "updated_at", updated_at)
    for c in all_changes:
        c.values, c.ledger, c.events = {}, [], []


def _event_for(intent: Intent, status: IntentStatus, reason: str | None) -> Event | None:
    common: dict[str, Any] = {
        "payment_id": str(intent.id),
        "user_id": intent.user_id,
        "amount": intent.amount,
        "currency": intent.currency,
    }
    if status is IntentStatus.SUCCEEDED:
        return PaymentSucceeded(**common, provider_ref=intent.provider_id)
    if status is IntentStatus.PROCESSING:
        return PaymentProcessing(**common, provider_ref=intent.provider_id)
    if status is IntentStatus.FAILED:
        return PaymentFailed(**common, reason=reason)
    if status is IntentStatus.CANCELED:
        return PaymentCanceled(**common)
    return None  # refunds announce themselves with the refund (RefundSucceeded)


def move(
    changes: Changes,
    target: IntentStatus,
    *,
    source: str,
    event_at: int | None = None,
    provider_event_id: str | None = None,
    reason: str | None = None,
    data: dict[str, Any] | None = None,
) -> bool:
    """Move the intent to `target` if the machine allows it and the news is not older.

    `event_at` is the provider's time for the news (a webhook's `created`); news older
    than what was already applied never moves the state. Returns whether it moved; the
    ledger row and the outbox event go into `changes`, written with the new status.
    """
    intent = changes.intent
    current = IntentStatus(intent.status)
    if target is current or not can_move(current, target):
        return False
    if (
        event_at is not None
        and intent.last_event_at is not None
        and event_at < intent.last_event_at
    ):
        return False
    changes.set(status=target.value)
    if event_at is not None:
        changes.set(last_event_at=max(event_at, intent.last_event_at or 0))
    changes.record(
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
        changes.announce(event)
    monitor.add_breadcrumb(
        "payment intent status changed",
        category="payment",
        intent_id=str(intent.id),
        from_status=current.value,
        to_status=target.value,
        source=source,
    )
    return True

"""Moving an intent between states: the one path that writes the ledger row and the event.

A `Changes` collects what one transaction does to one intent (new column values, ledger
rows, outbox events) and `write` sends it as one statement: an UPDATE, a multi-row
INSERT into the ledger and one into the outbox, as CTEs of a single SELECT. The intent
object in the session is given the new values as already committed ones, so the
session's flush does not write them a second time.
"""

from __future__ import annotations

import functools
from typing import Any, cast

from sqlalchemy import (
    Select,
    Table,
    bindparam,
    func,
    insert,
    inspect,
    literal_column,
    select,
    update,
)
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
from keelson.outbox import outbox_insert, outbox_parameters
from payments_service.models import Intent, LedgerEntry
from payments_service.states import IntentStatus, can_move

__all__ = ["Changes", "move"]

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
        """New column values of the intent (attribute names of `Intent`)."""
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
        if not (self.values or self.ledger or self.events):
            return
        columns = tuple(sorted(self.values))
        statement = _write_statement(columns, len(self.ledger), len(self.events))
        parameters: dict[str, Any] = {"intent_id": self.intent.id}
        parameters.update({f"set_{name}": self.values[name] for name in columns})
        for i, row in enumerate(self.ledger):
            parameters.update({f"ledger_{name}_{i}": value for name, value in row.items()})
        if self.events:
            parameters.update(outbox_parameters(db, self.events))
        result = await db.execute(statement, parameters)
        if columns:
            set_committed_value(self.intent, "updated_at", result.scalar_one())
        self.values, self.ledger, self.events = {}, [], []


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


@functools.cache
def _write_statement(columns: tuple[str, ...], ledger_rows: int, events: int) -> Select[Any]:
    """The one statement of a `Changes` of this shape, built (and so compiled) once."""
    statement: Select[Any] = select(literal_column("1"))
    ctes = []
    if columns:
        mapped = inspect(Intent).columns
        moved = (
            update(_INTENTS)
            .where(_INTENTS.c.id == bindparam("intent_id", type_=_INTENTS.c.id.type))
            .values(
                {
                    **{
                        mapped[name].name: bindparam(f"set_{name}", type_=mapped[name].type)
                        for name in columns
                    },
                    "updated_at": func.now(),
                }
            )
            .returning(_INTENTS.c.updated_at)
            .cte("moved")
        )
        statement = select(moved.c.updated_at)
    # One single-row INSERT per row (SQLAlchemy caches the compiled form of those, never
    # that of a multi-row VALUES), each reading the one before, so the rows' ids follow
    # the order they were recorded in.
    previous = None
    for i in range(ledger_rows):
        row = [
            bindparam(f"ledger_{name}_{i}", type_=_LEDGER.c[name].type).label(name)
            for name in _LEDGER_COLUMNS
        ]
        recorded = (
            insert(_LEDGER).values({c.name: c.element for c in row})
            if previous is None
            else insert(_LEDGER).from_select(_LEDGER_COLUMNS, select(*row).select_from(previous))
        )
        previous = recorded.returning(_LEDGER.c.id).cte(f"recorded_{i}")
        ctes.append(previous)
    ctes += [outbox_insert(i).cte(f"announced_{i}") for i in range(events)]
    return statement.add_cte(*ctes) if ctes else statement


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

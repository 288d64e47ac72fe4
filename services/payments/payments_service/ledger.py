"""The append-only ledger: what happened to a payment, row by row."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from payments_service.models import LedgerEntry

__all__ = ["entries", "record"]


def record(
    db: AsyncSession,
    *,
    intent_id: uuid.UUID,
    kind: str,
    source: str,
    from_status: str | None = None,
    to_status: str | None = None,
    amount: int | None = None,
    provider_event_id: str | None = None,
    data: dict[str, Any] | None = None,
) -> LedgerEntry:
    """Add a row to the caller's transaction (it commits with the change it describes)."""
    entry = LedgerEntry(
        intent_id=intent_id,
        kind=kind,
        source=source,
        from_status=from_status,
        to_status=to_status,
        amount=amount,
        provider_event_id=provider_event_id,
        data=data or {},
    )
    db.add(entry)
    return entry


async def entries(db: AsyncSession, *, intent_id: uuid.UUID) -> Sequence[LedgerEntry]:
    rows = await db.scalars(
        select(LedgerEntry).where(LedgerEntry.intent_id == intent_id).order_by(LedgerEntry.id)
    )
    return rows.all()

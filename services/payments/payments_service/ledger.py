"""The append-only ledger, read: what happened to a payment, row by row.

Rows are written only by `lifecycle.Changes.record` (with the change they describe).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from payments_service.models import LedgerEntry

__all__ = ["entries"]


async def entries(db: AsyncSession, *, intent_id: uuid.UUID) -> Sequence[LedgerEntry]:
    rows = await db.scalars(
        select(LedgerEntry).where(LedgerEntry.intent_id == intent_id).order_by(LedgerEntry.id)
    )
    return rows.all()

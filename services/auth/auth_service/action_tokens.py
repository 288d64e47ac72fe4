"""Single-use, expiring tokens sent by email: password reset and email verification."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from auth_service.models import ActionToken, TokenPurpose
from auth_service.tokens import hash_token, new_opaque_token

__all__ = ["consume_action_token", "issue_action_token", "issued_within"]


async def issue_action_token(
    db: AsyncSession, *, user_id: uuid.UUID, purpose: TokenPurpose, ttl: timedelta
) -> tuple[str, datetime]:
    """A new token for `purpose`; earlier unused ones for the same purpose stop working."""
    await _spend_all(db, user_id=user_id, purpose=purpose)
    token, digest = new_opaque_token()
    expires_at = datetime.now(UTC) + ttl
    db.add(ActionToken(user_id=user_id, purpose=purpose, token_hash=digest, expires_at=expires_at))
    await db.flush()
    return token, expires_at


async def issued_within(
    db: AsyncSession, *, user_id: uuid.UUID, purpose: TokenPurpose, period: timedelta
) -> bool:
    """Whether a token for `purpose` was issued to the user within the last `period`."""
    if period <= timedelta(0):
        return False
    recent = exists().where(
        ActionToken.user_id == user_id,
        ActionToken.purpose == purpose,
        ActionToken.created_at > func.now() - period,
    )
    return bool(await db.scalar(select(recent)))


async def consume_action_token(
    db: AsyncSession, *, token: str, purpose: TokenPurpose
) -> uuid.UUID | None:
    """The user the token belongs to, spending it; None if unknown, used or expired."""
    row = (
        await db.execute(
            update(ActionToken)
            .where(
                ActionToken.token_hash == hash_token(token),
                ActionToken.purpose == purpose,
                ActionToken.used_at.is_(None),
                ActionToken.expires_at > func.now(),
            )
            .values(used_at=func.now())
            .returning(ActionToken.user_id)
        )
    ).first()
    if row is None:
        return None
    await _spend_all(db, user_id=row.user_id, purpose=purpose)
    return uuid.UUID(str(row.user_id))


async def _spend_all(db: AsyncSession, *, user_id: uuid.UUID, purpose: TokenPurpose) -> None:
    await db.execute(
        update(ActionToken)
        .where(
            ActionToken.user_id == user_id,
            ActionToken.purpose == purpose,
            ActionToken.used_at.is_(None),
        )
        .values(used_at=func.now())
    )

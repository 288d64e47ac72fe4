"""Login sessions: each is a refresh-token family; rotation, reuse detection, revocation."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from auth_service.models import IssuedAccessToken, RefreshToken, RevokeReason, Session
from auth_service.tokens import AccessToken, new_opaque_token
from keelson.keys import FieldCipher

__all__ = [
    "RevokedAccess",
    "SpentToken",
    "add_refresh_token",
    "find_refresh_token",
    "forget_successors",
    "get_session_row",
    "keep_successor",
    "record_access_token",
    "reseal_successors",
    "revoke_sessions",
    "spend_refresh_token",
    "start_session",
]


@dataclass(frozen=True)
class RevokedAccess:
    """An access token still alive when its session was revoked; its `jti` must be refused."""

    jti: str
    expires_at: float


@dataclass(frozen=True)
class SpentToken:
    session_id: uuid.UUID
    expires_at: datetime


async def start_session(
    db: AsyncSession,
    *,
    user_id: uuid.UUID,
    scopes: list[str],
    client_ip: str | None,
    user_agent: str | None,
) -> Session:
    row = Session(
        id=uuid.uuid4(),
        user_id=user_id,
        scopes=scopes,
        client_ip=client_ip,
        user_agent=(user_agent or "")[:300] or None,
    )
    db.add(row)
    await db.flush()
    return row


async def get_session_row(db: AsyncSession, *, session_id: uuid.UUID) -> Session | None:
    return await db.get(Session, session_id)


async def add_refresh_token(db: AsyncSession, *, session_id: uuid.UUID, ttl: timedelta) -> str:
    """A new refresh token in the family; the sliding expiry starts again from now."""
    token, digest = new_opaque_token()
    db.add(
        RefreshToken(session_id=session_id, token_hash=digest, expires_at=datetime.now(UTC) + ttl)
    )
    await db.flush()
    return token


async def record_access_token(
    db: AsyncSession, *, session_id: uuid.UUID, access: AccessToken
) -> None:
    """Remember the token's `jti` until it expires, so revoking the session can refuse it."""
    await db.execute(
        delete(IssuedAccessToken).where(
            IssuedAccessToken.session_id == session_id,
            IssuedAccessToken.expires_at <= func.now(),
        )
    )
    await db.execute(
        insert(IssuedAccessToken).values(
            jti=access.jti,
            session_id=session_id,
            expires_at=datetime.fromtimestamp(access.expires_at, UTC),
        )
    )


async def spend_refresh_token(db: AsyncSession, *, token_hash: bytes) -> SpentToken | None:
    """Mark the token used if it was unused; None if it is unknown or already spent.

    One atomic UPDATE ... WHERE used_at IS NULL: of two concurrent presentations Postgres
    lets exactly one see the row unused, the other waits and then matches nothing.
    """
    row = (
        await db.execute(
            update(RefreshToken)
            .where(RefreshToken.token_hash == token_hash, RefreshToken.used_at.is_(None))
            .values(used_at=func.now())
            .returning(RefreshToken.session_id, RefreshToken.expires_at)
        )
    ).first()
    return None if row is None else SpentToken(row.session_id, row.expires_at)


async def keep_successor(db: AsyncSession, *, token_hash: bytes, sealed: str) -> None:
    """Remember, sealed, the pair the spent token `token_hash` was exchanged for."""
    await db.execute(
        update(RefreshToken)
        .where(RefreshToken.token_hash == token_hash)
        .values(successor_sealed=sealed)
    )


async def forget_successors(
    db: AsyncSession, *, session_id: uuid.UUID, older_than: timedelta
) -> None:
    """Drop the sealed successors of tokens spent longer ago than the grace window."""
    await db.execute(
        update(RefreshToken)
        .where(
            RefreshToken.session_id == session_id,
            RefreshToken.successor_sealed.is_not(None),
            RefreshToken.used_at < func.now() - older_than,
        )
        .values(successor_sealed=None)
    )


async def reseal_successors(db: AsyncSession, *, cipher: FieldCipher) -> int:
    """Seal again, under the current master key, the kept successors sealed under an older."""
    rows = await db.scalars(
        select(RefreshToken).where(RefreshToken.successor_sealed.is_not(None)).with_for_update()
    )
    resealed = 0
    for row in rows:
        sealed = row.successor_sealed
        if sealed is None or not cipher.needs_rotation(sealed):
            continue
        plain = cipher.decrypt(sealed, associated=row.token_hash)
        row.successor_sealed = cipher.encrypt(plain, associated=row.token_hash)
        resealed += 1
    await db.flush()
    return resealed


async def find_refresh_token(db: AsyncSession, *, token_hash: bytes) -> RefreshToken | None:
    return await db.scalar(select(RefreshToken).where(RefreshToken.token_hash == token_hash))


async def revoke_sessions(
    db: AsyncSession,
    *,
    reason: RevokeReason,
    session_id: uuid.UUID | None = None,
    user_id: uuid.UUID | None = None,
    keep_session_id: uuid.UUID | None = None,
) -> list[RevokedAccess]:
    """End one session, or every session of a user (but `keep_session_id`).

    Returns the access tokens of those sessions that have not expired yet.
    """
    if (session_id is None) == (user_id is None):
        raise ValueError("give exactly one of session_id and user_id")
    statement = (
        update(Session)
        .where(Session.revoked_at.is_(None))
        .values(revoked_at=func.now(), revoked_reason=reason)
        .returning(Session.id)
    )
    if session_id is not None:
        statement = statement.where(Session.id == session_id)
    else:
        statement = statement.where(Session.user_id == user_id)
    if keep_session_id is not None:
        statement = statement.where(Session.id != keep_session_id)
    ended = list((await db.scalars(statement)).all())
    if not ended:
        return []
    await db.execute(
        update(RefreshToken)
        .where(RefreshToken.session_id.in_(ended), RefreshToken.successor_sealed.is_not(None))
        .values(successor_sealed=None)
    )
    # Once refused through the revocation list these rows are no longer needed.
    issued = await db.execute(
        delete(IssuedAccessToken)
        .where(IssuedAccessToken.session_id.in_(ended))
        .returning(IssuedAccessToken.jti, IssuedAccessToken.expires_at)
    )
    now = datetime.now(UTC)
    return [
        RevokedAccess(row.jti, row.expires_at.timestamp()) for row in issued if row.expires_at > now
    ]

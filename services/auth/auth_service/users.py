"""User queries: plain async functions over the `users` table."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from auth_service.models import User
from keelson.errors import Conflict, Unprocessable

__all__ = [
    "ADMIN_ROLE",
    "count_active_admins",
    "create_user",
    "delete_user",
    "get_user",
    "get_user_by_email",
    "list_users",
    "normalize_email",
    "parse_uuid",
]

ADMIN_ROLE = "admin"


def normalize_email(email: str, *, strict: bool = True) -> str:
    """Lower-cased, IDNA-normalised address; `strict=False` never raises (for lookups)."""
    try:
        return validate_email(email.strip(), check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        if strict:
            raise Unprocessable(f"email: {exc}", rule="email") from None
        return email.strip().lower()


def parse_uuid(value: str | None) -> uuid.UUID | None:
    """A UUID from a claim, header or path; None when absent or malformed."""
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None


async def get_user(
    db: AsyncSession, *, user_id: uuid.UUID, for_update: bool = False
) -> User | None:
    return await db.get(User, user_id, with_for_update=for_update)


async def get_user_by_email(db: AsyncSession, *, email: str) -> User | None:
    return await db.scalar(select(User).where(User.email == email))


async def create_user(
    db: AsyncSession,
    *,
    email: str,
    password_hash: str,
    name: str | None,
    roles: Sequence[str],
    verified: bool = False,
) -> User:
    """Insert a user; 409 when the email is taken (and nothing more is said)."""
    user = User(
        id=uuid.uuid4(),
        email=email,
        name=name,
        password_hash=password_hash,
        roles=sorted(set(roles)),
        is_active=True,
        email_verified_at=datetime.now(UTC) if verified else None,
    )
    try:
        async with db.begin_nested():
            db.add(user)
    except IntegrityError:
        raise Conflict("an account with this email already exists") from None
    await db.refresh(user)
    return user


async def list_users(
    db: AsyncSession, *, email: str | None, limit: int, offset: int
) -> tuple[list[User], int]:
    """One page ordered by creation, and the total; `email` matches a part, any case."""
    query = select(User)
    if email:
        escaped = email.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(User.email.like(f"%{escaped}%", escape="\\"))
    total = await db.scalar(select(func.count()).select_from(query.subquery()))
    page = await db.scalars(query.order_by(User.created_at, User.id).limit(limit).offset(offset))
    return list(page), int(total or 0)


async def count_active_admins(db: AsyncSession, *, excluding: uuid.UUID | None = None) -> int:
    query = select(func.count()).where(User.roles.contains([ADMIN_ROLE]), User.is_active.is_(True))
    if excluding is not None:
        query = query.where(User.id != excluding)
    return int(await db.scalar(query) or 0)


async def delete_user(db: AsyncSession, *, user_id: uuid.UUID) -> bool:
    result = await db.execute(delete(User).where(User.id == user_id).returning(User.id))
    return result.first() is not None

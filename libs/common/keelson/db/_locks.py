"""Transaction-level PostgreSQL advisory locks, for work that replicas must not do at once."""

from __future__ import annotations

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["advisory_xact_lock"]


async def advisory_xact_lock(db: AsyncSession | asyncpg.Connection, lock: str | int) -> None:
    """Wait for the lock `lock`, held until `db`'s transaction commits or rolls back.

    A name is turned into the lock id by PostgreSQL's `hashtext`, so every process that
    names the same lock takes the same one; an int is the lock id itself. Advisory locks
    are database-wide, so names should start with their owner (`keelson.logs.`...).
    """
    if isinstance(db, AsyncSession):
        await db.execute(text(_statement(lock, ":lock")), {"lock": lock})
    else:
        await db.execute(_statement(lock, "$1"), lock)


def _statement(lock: str | int, placeholder: str) -> str:
    key = f"hashtext({placeholder})" if isinstance(lock, str) else placeholder
    return f"SELECT pg_advisory_xact_lock({key})"

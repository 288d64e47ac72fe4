"""`Idempotency-Key` on requests that change state (sign-up), stored in the caller's
transaction.

The key is claimed in the same transaction as the request's effect: a retry after the
first committed finds it and gets the first answer without doing anything again; a retry
while the first is still running waits on the key's row and then does the same; a first
attempt that failed (rolled back) leaves no key, so its retry runs. The body is kept as an
HMAC under a key derived from the master key (a plain hash of a body with a password in it
would be a password hash anyone with the table could attack). Keys live 24 hours.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
from datetime import timedelta
from typing import Annotated

from fastapi import Header
from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from auth_service.models import IdempotencyKey
from keelson.errors import IdempotencyConflict
from keelson.keys import KeyManager

__all__ = ["KEY_TTL", "IdempotencyKeyHeader", "claim", "fingerprint"]

KEY_TTL = timedelta(hours=24)
_PURGE_CHANCE = 0.01  # of claims that also delete expired keys (indexed by created_at)

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="Any unique string (a UUID): a retry with the same key and body gets "
        "the first attempt's answer and changes nothing; another body is 409. Kept 24 h.",
    ),
]


def fingerprint(keys: KeyManager, scope: str, body: object) -> bytes:
    """A keyed digest of the request body (canonical JSON)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(keys.derive(f"auth/idempotency/{scope}"), canonical, hashlib.sha256).digest()


async def claim(db: AsyncSession, *, scope: str, key: str, digest: bytes) -> bool:
    """Claim `key` in the session's transaction: True when this request is the first (it
    must now do its work and commit), False when it is a retry of one that committed.

    Raises `IdempotencyConflict` (409) when the key came with another body.
    """
    table = IdempotencyKey
    if random.random() < _PURGE_CHANCE:
        await db.execute(delete(table).where(table.created_at < func.now() - KEY_TTL))
    inserted = await db.execute(
        insert(table)
        .values(scope=scope, key=key, fingerprint=digest)
        .on_conflict_do_nothing()
        .returning(table.key)
    )
    if inserted.first() is not None:
        return True
    row = (
        await db.execute(
            select(table.fingerprint, table.created_at < func.now() - KEY_TTL)
            .where(table.scope == scope, table.key == key)
            .with_for_update()
        )
    ).one()
    stored, expired = row
    if expired:  # an old key used again: a new request
        await db.execute(
            update(table)
            .where(table.scope == scope, table.key == key)
            .values(fingerprint=digest, created_at=func.now())
        )
        return True
    if not hmac.compare_digest(stored, digest):
        raise IdempotencyConflict("this Idempotency-Key was used with another request body")
    return False

"""Operator commands behind `python -m auth_service admin ...` (auth_service.cli)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from auth_service.admin import make_admin
from auth_service.keyring import (
    key_cipher,
    reseal_signing_keys,
    rotate_signing_keys,
    signing_index,
)
from auth_service.models import SCHEMA, SigningKeyRecord
from auth_service.passwords import PasswordHashing
from auth_service.plugin import SUCCESSOR_CIPHER_PURPOSE
from auth_service.sessions import reseal_successors
from auth_service.settings import Settings
from keelson.db import create_engine
from keelson.keys import KeyManager

__all__ = [
    "KeyInfo",
    "KeyState",
    "Resealed",
    "create_admin",
    "list_keys",
    "reencrypt",
    "rotate_keys",
]

# Beyond the access-token lifetime, so no live token loses its key; covers clock skew.
_RETIRE_MARGIN = timedelta(minutes=5)


class KeyState(StrEnum):
    PUBLISHED = "published"  # in the JWKS, signing once activated
    SIGNING = "signing"
    VERIFYING = "verifying"  # superseded; its tokens may still be live
    RETIRED = "retired"


@dataclass(frozen=True)
class KeyInfo:
    kid: str
    created_at: datetime
    state: KeyState


async def create_admin(settings: Settings, *, email: str, password: str | None) -> bool:
    """Make `email` an admin; True when the account was created, False when promoted."""
    passwords = PasswordHashing(settings.auth.password)
    async with _session(settings) as db:
        _, created = await make_admin(
            db, email=email, password=password, passwords=passwords, settings=settings.auth
        )
    return created


async def rotate_keys(settings: Settings) -> tuple[str, list[str]]:
    """Add a signing key: published within `key_reload_seconds`, signing after
    `key_activation_seconds`.

    Keys superseded longer ago than that plus an access token's life are retired: they
    can no longer verify any live token.
    """
    auth = settings.auth
    grace = (
        timedelta(seconds=auth.key_activation_seconds + auth.access_token_ttl_seconds)
        + _RETIRE_MARGIN
    )
    cipher = key_cipher(KeyManager.from_settings(settings))
    async with _session(settings) as db:
        kid, retired = await rotate_signing_keys(db, cipher=cipher, grace=grace)
        await db.commit()
    return kid, retired


@dataclass(frozen=True)
class Resealed:
    signing_keys: list[str]
    refresh_successors: int


async def reencrypt(settings: Settings) -> Resealed:
    """After a master-key rotation: seal under the new master key what older ones sealed.

    Afterwards `previous_master_keys` can be emptied. Decrypting needs the old key there.
    """
    master = KeyManager.from_settings(settings)
    async with _session(settings) as db:
        kids = await reseal_signing_keys(db, cipher=key_cipher(master))
        successors = await reseal_successors(
            db, cipher=master.field_cipher(SUCCESSOR_CIPHER_PURPOSE)
        )
        await db.commit()
    return Resealed(kids, successors)


async def list_keys(settings: Settings) -> list[KeyInfo]:
    async with _session(settings) as db:
        records = list(
            await db.scalars(
                select(SigningKeyRecord).order_by(SigningKeyRecord.created_at, SigningKeyRecord.kid)
            )
        )
    live = [record for record in records if record.retired_at is None]
    signing = signing_index(
        [record.created_at for record in live],
        activation_delay=settings.auth.key_activation_seconds,
        now=datetime.now(UTC),
    )
    states = {
        record.kid: (
            KeyState.SIGNING
            if i == signing
            else KeyState.PUBLISHED
            if i > signing
            else KeyState.VERIFYING
        )
        for i, record in enumerate(live)
    }
    return [KeyInfo(r.kid, r.created_at, states.get(r.kid, KeyState.RETIRED)) for r in records]


@asynccontextmanager
async def _session(settings: Settings) -> AsyncIterator[AsyncSession]:
    engine = create_engine(settings, schema=SCHEMA)
    try:
        async with async_sessionmaker(engine, expire_on_commit=False)() as session:
            yield session
    finally:
        await engine.dispose()

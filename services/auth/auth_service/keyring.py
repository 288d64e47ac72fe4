"""Signing keys: stored sealed in the database; the newest signs, every unretired one verifies."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from jose import jwk, jwt
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from auth_service.models import SigningKeyRecord
from keelson.auth import ALGORITHM
from keelson.db import advisory_xact_lock
from keelson.keys import FieldCipher, KeyManager, SigningKey

__all__ = [
    "KEY_CIPHER_PURPOSE",
    "KeyRing",
    "LoadedKey",
    "ensure_signing_key",
    "key_cipher",
    "reseal_signing_keys",
    "rotate_signing_keys",
    "signing_index",
]

KEY_CIPHER_PURPOSE = "auth-signing-keys"
_log = logging.getLogger("auth_service.keyring")
# Serialises key creation across replicas starting at once (an arbitrary constant).
_KEY_LOCK_ID = 0x6B65_6C73
# The keys in use, oldest first (`clock_timestamp()` creation times, then `kid`).
_UNRETIRED = (
    select(SigningKeyRecord)
    .where(SigningKeyRecord.retired_at.is_(None))
    .order_by(SigningKeyRecord.created_at, SigningKeyRecord.kid)
)


def key_cipher(keys: KeyManager) -> FieldCipher:
    return keys.field_cipher(KEY_CIPHER_PURPOSE)


def signing_index(created: Sequence[datetime], *, activation_delay: float, now: datetime) -> int:
    """Which key (oldest first) signs: the newest one published for `activation_delay`.

    A new key is served in the JWKS of every replica before any replica signs with it, so
    a verifier that meets its `kid` finds it whichever replica it asks. While no key is
    old enough (the very first one), the oldest signs.
    """
    cutoff = now - timedelta(seconds=activation_delay)
    ready = [i for i, created_at in enumerate(created) if created_at <= cutoff]
    return ready[-1] if ready else 0


@dataclass(frozen=True)
class LoadedKey:
    kid: str
    created_at: datetime
    public_jwk: dict[str, Any]
    signer: Any
    verifier: Any


class KeyRing:
    """The unretired keys in memory, reloaded on an unknown `kid` and by `reload`.

    Every key verifies and is published; a new one signs only after `activation_delay`.

    It is the auth service's own `KeySource`: it verifies its tokens without fetching
    its own JWKS over HTTP.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        cipher: FieldCipher,
        *,
        activation_delay: float = 0.0,
        min_reload_interval: float = 5.0,
    ) -> None:
        self.sessions = sessions
        self.cipher = cipher
        self.activation_delay = activation_delay
        self.min_reload_interval = min_reload_interval
        self._keys: list[LoadedKey] = []
        self._by_kid: dict[str, LoadedKey] = {}
        self._loaded_at = -min_reload_interval
        self._lock = asyncio.Lock()

    @property
    def active(self) -> LoadedKey:
        if not self._keys:
            raise RuntimeError("no signing key loaded")
        created = [key.created_at for key in self._keys]
        now = datetime.now(UTC)
        return self._keys[signing_index(created, activation_delay=self.activation_delay, now=now)]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.public_jwk for key in self._keys]}

    async def reload(self) -> None:
        self._loaded_at = time.monotonic()
        async with self.sessions() as session:
            loaded = [self._load(record) for record in await session.scalars(_UNRETIRED)]
        self._keys = loaded
        self._by_kid = {key.kid: key for key in loaded}

    async def get(self, kid: str) -> Any | None:
        key = self._by_kid.get(kid)
        if key is None and time.monotonic() - self._loaded_at >= self.min_reload_interval:
            async with self._lock:
                if kid not in self._by_kid:
                    await self.reload()
            key = self._by_kid.get(kid)
        return None if key is None else key.verifier

    def sign(self, claims: dict[str, Any]) -> str:
        key = self.active
        token: str = jwt.encode(claims, key.signer, algorithm=ALGORITHM, headers={"kid": key.kid})
        return token

    def _load(self, record: SigningKeyRecord) -> LoadedKey:
        signing_key = SigningKey.from_pem(
            self.cipher.decrypt(record.private_pem_sealed, associated=record.kid.encode())
        )
        public = signing_key.public_jwk()
        return LoadedKey(
            kid=signing_key.kid,
            created_at=record.created_at,
            public_jwk=public,
            signer=jwk.construct(signing_key.private_pem, ALGORITHM),
            verifier=jwk.construct(public, ALGORITHM),
        )


async def ensure_signing_key(session: AsyncSession, *, cipher: FieldCipher) -> str | None:
    """Create the first key when none is usable; the new `kid`, or None if one existed."""
    await advisory_xact_lock(session, _KEY_LOCK_ID)
    existing = await session.scalar(
        select(SigningKeyRecord.kid).where(SigningKeyRecord.retired_at.is_(None)).limit(1)
    )
    if existing is not None:
        return None
    return await _add_key(session, cipher=cipher)


async def rotate_signing_keys(
    session: AsyncSession, *, cipher: FieldCipher, grace: timedelta
) -> tuple[str, list[str]]:
    """Add a key (it signs once activated); retire keys superseded more than `grace` ago.

    `grace` should exceed the activation delay plus the access-token lifetime: until then
    tokens signed by an older key are still live and must verify. Returns the new `kid`
    and the retired ones.
    """
    await advisory_xact_lock(session, _KEY_LOCK_ID)
    now = datetime.now(UTC)
    records = list(await session.scalars(_UNRETIRED))
    retired = [
        older.kid for older, newer in itertools.pairwise(records) if newer.created_at < now - grace
    ]
    if retired:
        await session.execute(
            update(SigningKeyRecord).where(SigningKeyRecord.kid.in_(retired)).values(retired_at=now)
        )
    kid = await _add_key(session, cipher=cipher)
    return kid, retired


async def reseal_signing_keys(session: AsyncSession, *, cipher: FieldCipher) -> list[str]:
    """Seal again, under the current master key, every key sealed under an older one."""
    await advisory_xact_lock(session, _KEY_LOCK_ID)
    resealed: list[str] = []
    for record in await session.scalars(select(SigningKeyRecord).with_for_update()):
        if not cipher.needs_rotation(record.private_pem_sealed):
            continue
        associated = record.kid.encode()
        pem = cipher.decrypt(record.private_pem_sealed, associated=associated)
        record.private_pem_sealed = cipher.encrypt(pem, associated=associated)
        resealed.append(record.kid)
    await session.flush()
    return resealed


async def _add_key(session: AsyncSession, *, cipher: FieldCipher) -> str:
    key = SigningKey.generate()
    sealed = cipher.encrypt(key.private_pem, associated=key.kid.encode())
    # clock_timestamp(), not now(): keys made in one transaction must still be ordered.
    await session.execute(
        insert(SigningKeyRecord).values(
            kid=key.kid, private_pem_sealed=sealed, created_at=func.clock_timestamp()
        )
    )
    _log.info("added signing key %s", key.kid)
    return key.kid

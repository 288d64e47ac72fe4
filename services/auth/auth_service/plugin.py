"""The auth service's plugin: key ring, password hashing, login throttle, verifier, first admin."""

from __future__ import annotations

import asyncio
import logging

from auth_service.admin import bootstrap_admin
from auth_service.keyring import KeyRing, ensure_signing_key, key_cipher
from auth_service.passwords import PasswordHashing
from auth_service.settings import Settings
from auth_service.throttle import LoginThrottle, MemoryCounters, RedisCounters
from keelson.auth import (
    IDENTITY_KEY,
    REVOCATIONS,
    TOKEN_VERIFIER,
    RevocationList,
    TokenVerifier,
    identity_verifier,
)
from keelson.bus import BUS
from keelson.db import DB_SESSIONS
from keelson.keys import FieldCipher, KeyManager
from keelson.plugins import Health, Key, Plugin, PluginMetadata, Priority
from keelson.redis_plugin import REDIS
from keelson.tasks import cancel_and_wait

__all__ = [
    "KEYRING",
    "LOGIN_THROTTLE",
    "PASSWORDS",
    "REFRESH_SUCCESSORS",
    "SUCCESSOR_CIPHER_PURPOSE",
    "AuthServicePlugin",
]

KEYRING: Key[KeyRing] = Key("auth_service.keyring")
PASSWORDS: Key[PasswordHashing] = Key("auth_service.passwords")
LOGIN_THROTTLE: Key[LoginThrottle] = Key("auth_service.throttle")
# Seals the pair a spent refresh token was exchanged for, kept for the reuse grace window.
REFRESH_SUCCESSORS: Key[FieldCipher] = Key("auth_service.refresh_successors")
SUCCESSOR_CIPHER_PURPOSE = "auth-refresh-successors"
_log = logging.getLogger("auth_service.plugin")


class AuthServicePlugin(Plugin):
    """Everything the handlers need, built once; verifies its own tokens without HTTP."""

    metadata = PluginMetadata(
        name="auth_service",
        priority=Priority.SECURITY,
        depends_on=("database",),
        description="Signing keys, password hashing, login throttling",
    )

    async def initialize(self) -> None:
        settings = self.container.settings
        assert isinstance(settings, Settings)
        self.config = settings
        # Previous master keys still unseal what they sealed, so auth starts after a rotation.
        master = KeyManager.from_settings(settings)
        redis = self.container.resolve_optional(REDIS)
        self.keyring = KeyRing(
            self.container.resolve(DB_SESSIONS),
            key_cipher(master),
            activation_delay=settings.auth.key_activation_seconds,
        )
        self.passwords = await asyncio.to_thread(PasswordHashing, settings.auth.password)
        counters = RedisCounters(redis) if redis is not None else MemoryCounters()
        self.revocations = RevocationList.on_bus(
            redis, self.container.resolve_optional(BUS), announce=True
        )
        self.container.provide(KEYRING, self.keyring)
        self.container.provide(PASSWORDS, self.passwords)
        self.container.provide(REFRESH_SUCCESSORS, master.field_cipher(SUCCESSOR_CIPHER_PURPOSE))
        self.container.provide(
            LOGIN_THROTTLE,
            LoginThrottle(
                counters, settings.auth.throttle, prefix=settings.auth.throttle.key_prefix
            ),
        )
        self.container.provide(REVOCATIONS, self.revocations)
        self.container.provide(IDENTITY_KEY, identity_verifier(settings))
        self.container.provide(
            TOKEN_VERIFIER,
            TokenVerifier(
                self.keyring,
                issuer=settings.auth.issuer,
                audience=settings.auth.audience,
                revocations=self.revocations,
            ),
        )

    async def start(self) -> None:
        # Mirror the current revocations, so an outage of Redis never lets one through;
        # if Redis is away now, the first answer from it loads them.
        await self.revocations.sync()
        sessions = self.container.resolve(DB_SESSIONS)
        async with sessions() as db:
            kid = await ensure_signing_key(db, cipher=self.keyring.cipher)
            await db.commit()
        if kid is not None:
            _log.info("created the first signing key %s", kid)
        await self.keyring.reload()
        await self._bootstrap_admin()
        self._reloader = asyncio.create_task(self._reload_keys(), name="auth-key-reload")

    async def stop(self) -> None:
        await cancel_and_wait(self._reloader)
        self.passwords.close()

    async def health(self) -> Health:
        return Health(ok=True, detail=f"signing with {self.keyring.active.kid}")

    async def _bootstrap_admin(self) -> None:
        email, password = self.config.admin_email, self.config.admin_password
        if not email or password is None:
            return
        async with self.container.resolve(DB_SESSIONS)() as db:
            await bootstrap_admin(
                db,
                email=email,
                password=password.get_secret_value(),
                passwords=self.passwords,
                revocations=self.revocations,
                settings=self.config.auth,
            )

    async def _reload_keys(self) -> None:
        # A key added by `keelson auth rotate-keys` is published here within this period.
        while True:
            await asyncio.sleep(self.config.auth.key_reload_seconds)
            try:
                await self.keyring.reload()
            except Exception:
                _log.exception("reloading signing keys failed; keeping the current ones")

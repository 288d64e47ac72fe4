"""The plugin that gives a service its token verifier, revocation list and identity key."""

from __future__ import annotations

import httpx
from pydantic import BaseModel, Field

from keelson.auth._identity import DEFAULT_IDENTITY_MAX_AGE, IdentityVerifier, identity_verifier
from keelson.auth._jwks import JwksClient
from keelson.auth._revocation import RevocationList
from keelson.auth._verifier import DEFAULT_AUDIENCE, DEFAULT_ISSUER, TokenVerifier
from keelson.bus import BUS
from keelson.plugins import Health, Key, Plugin, PluginMetadata, Priority
from keelson.redis_plugin import REDIS

__all__ = [
    "IDENTITY_KEY",
    "IDENTITY_MAX_AGE",
    "REVOCATIONS",
    "TOKEN_VERIFIER",
    "AuthPlugin",
    "AuthSettings",
]

TOKEN_VERIFIER: Key[TokenVerifier] = Key("auth.verifier")
REVOCATIONS: Key[RevocationList] = Key("auth.revocations")
# What identity headers are checked with: the gateway's public keys (never a signer).
IDENTITY_KEY: Key[IdentityVerifier] = Key("auth.identity_key")
IDENTITY_MAX_AGE: Key[int] = Key("auth.identity_max_age")


class AuthSettings(BaseModel):
    """`plugins.auth.*` (env `KEELSON_PLUGINS__AUTH__JWKS_URL`, ...)."""

    jwks_url: str = "http://127.0.0.1:8001/.well-known/jwks.json"
    issuer: str = DEFAULT_ISSUER
    audience: str = DEFAULT_AUDIENCE
    leeway_seconds: int = Field(10, ge=0)
    jwks_min_refresh_seconds: float = Field(1.0, ge=0)
    jwks_max_age_seconds: float = Field(600.0, gt=0)
    jwks_timeout_seconds: float = Field(5.0, gt=0)
    identity_max_age_seconds: int = Field(DEFAULT_IDENTITY_MAX_AGE, gt=0)


class AuthPlugin(Plugin):
    """Verifies access tokens against the auth service's JWKS (for every other service)."""

    metadata = PluginMetadata(
        name="auth",
        priority=Priority.SECURITY,
        description="Access-token verification against the auth service's JWKS",
    )

    async def initialize(self) -> None:
        config = AuthSettings.model_validate(self.settings.model_dump(exclude={"enabled"}))
        self.http = httpx.AsyncClient(timeout=config.jwks_timeout_seconds)
        self.jwks = JwksClient(
            self.http,
            config.jwks_url,
            min_refresh_interval=config.jwks_min_refresh_seconds,
            max_age=config.jwks_max_age_seconds,
        )
        self.revocations = revocations = RevocationList.on_bus(
            self.container.resolve_optional(REDIS), self.container.resolve_optional(BUS)
        )
        verifier = TokenVerifier(
            self.jwks,
            issuer=config.issuer,
            audience=config.audience,
            revocations=revocations,
            leeway=config.leeway_seconds,
        )
        self.container.provide(TOKEN_VERIFIER, verifier)
        self.container.provide(REVOCATIONS, revocations)
        self.container.provide(IDENTITY_KEY, identity_verifier(self.container.settings))
        self.container.provide(IDENTITY_MAX_AGE, config.identity_max_age_seconds)

    async def start(self) -> None:
        # An auth service that is not up yet is no reason to fail to start; readiness
        # waits for the keys instead (see health).
        await self.jwks.refresh()
        # Mirror the current revocations, so an outage of Redis never lets one through;
        # if Redis is away now, the first answer from it loads them.
        await self.revocations.sync()

    async def stop(self) -> None:
        await self.http.aclose()

    async def health(self) -> Health:
        # Without keys every token would be refused with "unknown signing key": such a
        # service is not ready. Each probe fetches again (at most once per refresh
        # interval), so readiness follows the auth service as soon as it publishes a key.
        if await self.jwks.ensure_keys():
            return Health(ok=True, detail=f"{len(self.jwks.kids)} signing keys")
        return Health(ok=False, detail="no signing keys from the auth service yet")

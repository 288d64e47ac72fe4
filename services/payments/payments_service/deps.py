"""FastAPI dependencies of the payments service, each declared once as an `Annotated` alias."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.ext.asyncio import AsyncSession

from keelson.auth import CurrentUser, Principal, require_role
from keelson.db import get_session
from keelson.errors import NotFound
from keelson.payment import PaymentProvider, SandboxProvider
from keelson.service import provided
from payments_service.group_commit import GroupCommit
from payments_service.idempotency import require_key
from payments_service.plugin import GROUP_COMMIT, PAYMENT_PROVIDER
from payments_service.settings import PaymentsSettings

__all__ = [
    "AdminUser",
    "Config",
    "CurrentUser",
    "Events",
    "IdempotencyKey",
    "Provider",
    "Sandbox",
    "SessionDep",
]


Provider = Annotated[PaymentProvider, Depends(provided(PAYMENT_PROVIDER))]


async def _sandbox(provider: Provider) -> SandboxProvider:
    # With Stripe configured the sandbox routes do not exist, as far as a client can tell.
    if not isinstance(provider, SandboxProvider):
        raise NotFound("the sandbox is off: a Stripe key is configured")
    return provider


async def _config(request: Request) -> PaymentsSettings:
    settings: PaymentsSettings = request.app.state.settings.payments
    return settings


async def _idempotency_key(
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> str:
    return require_key(idempotency_key)


# The dependencies are `async def` though none awaits: FastAPI runs a plain `def` one in
# a worker thread, a thread hop per dependency and request.
SessionDep = Annotated[AsyncSession, Depends(get_session)]
Sandbox = Annotated[SandboxProvider, Depends(_sandbox)]
Events = Annotated[GroupCommit, Depends(provided(GROUP_COMMIT))]
Config = Annotated[PaymentsSettings, Depends(_config)]
IdempotencyKey = Annotated[str, Depends(_idempotency_key)]
AdminUser = Annotated[Principal, Depends(require_role("admin"))]

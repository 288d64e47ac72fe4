"""FastAPI dependencies of the auth service, each declared once as an `Annotated` alias."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from auth_service.keyring import KeyRing
from auth_service.passwords import PasswordHashing
from auth_service.plugin import KEYRING, LOGIN_THROTTLE, PASSWORDS
from auth_service.settings import AuthSettings
from auth_service.throttle import LoginThrottle
from keelson.auth import REVOCATIONS, CurrentUser, Principal, RevocationList, require_role
from keelson.db import get_session
from keelson.plugins import PluginContainer

__all__ = [
    "AdminUser",
    "AuthConfig",
    "ClientIP",
    "CurrentUser",
    "Keys",
    "Passwords",
    "Revocations",
    "SessionDep",
    "Throttle",
    "UserAgent",
]


def _keyring(request: Request) -> KeyRing:
    container: PluginContainer = request.app.state.container
    return container.resolve(KEYRING)


def _passwords(request: Request) -> PasswordHashing:
    container: PluginContainer = request.app.state.container
    return container.resolve(PASSWORDS)


def _throttle(request: Request) -> LoginThrottle:
    container: PluginContainer = request.app.state.container
    return container.resolve(LOGIN_THROTTLE)


def _revocations(request: Request) -> RevocationList:
    container: PluginContainer = request.app.state.container
    return container.resolve(REVOCATIONS)


def _auth_settings(request: Request) -> AuthSettings:
    settings: AuthSettings = request.app.state.settings.auth
    return settings


def _client_ip(request: Request) -> str:
    # uvicorn has already replaced this with X-Forwarded-For when the peer is a trusted
    # proxy (--forwarded-allow-ips), so behind the gateway it is the real client.
    return request.client.host if request.client else "unknown"


def _user_agent(request: Request) -> str | None:
    return request.headers.get("user-agent")


SessionDep = Annotated[AsyncSession, Depends(get_session)]
Keys = Annotated[KeyRing, Depends(_keyring)]
Passwords = Annotated[PasswordHashing, Depends(_passwords)]
Throttle = Annotated[LoginThrottle, Depends(_throttle)]
Revocations = Annotated[RevocationList, Depends(_revocations)]
AuthConfig = Annotated[AuthSettings, Depends(_auth_settings)]
ClientIP = Annotated[str, Depends(_client_ip)]
UserAgent = Annotated[str | None, Depends(_user_agent)]
AdminUser = Annotated[Principal, Depends(require_role("admin"))]

"""FastAPI dependencies of the auth service, each declared once as an `Annotated` alias."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from auth_service.keyring import KeyRing
from auth_service.login import LoginContext
from auth_service.passwords import PasswordHashing
from auth_service.plugin import KEYRING, LOGIN_THROTTLE, PASSWORDS, REFRESH_SUCCESSORS
from auth_service.settings import AuthSettings
from auth_service.throttle import LoginThrottle
from keelson.auth import REVOCATIONS, CurrentUser, Principal, RevocationList, require_scope
from keelson.db import get_session
from keelson.keys import FieldCipher, KeyManager
from keelson.service import provided

__all__ = [
    "AuthConfig",
    "ClientIP",
    "CurrentUser",
    "Keys",
    "Login",
    "MasterKeys",
    "Passwords",
    "ProfileReader",
    "ProfileWriter",
    "Revocations",
    "SessionDep",
    "Successors",
    "Throttle",
    "UserAgent",
    "UsersReader",
    "UsersWriter",
    "no_store",
]


def _auth_settings(request: Request) -> AuthSettings:
    settings: AuthSettings = request.app.state.settings.auth
    return settings


def _key_manager(request: Request) -> KeyManager:
    return KeyManager.from_settings(request.app.state.settings)


def _client_ip(request: Request) -> str:
    # uvicorn has already replaced this with X-Forwarded-For when the peer is one of
    # `trusted_proxies` (the gateway), so behind the gateway it is the real client.
    return request.client.host if request.client else "unknown"


def _user_agent(request: Request) -> str | None:
    return request.headers.get("user-agent")


def no_store(response: Response) -> None:
    """Token responses must not be cached anywhere (RFC 6749 section 5.1)."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"


SessionDep = Annotated[AsyncSession, Depends(get_session)]
Keys = Annotated[KeyRing, Depends(provided(KEYRING))]
# The master key's derivations (sealing emailed tokens for the notifications service).
MasterKeys = Annotated[KeyManager, Depends(_key_manager)]
Passwords = Annotated[PasswordHashing, Depends(provided(PASSWORDS))]
Throttle = Annotated[LoginThrottle, Depends(provided(LOGIN_THROTTLE))]
Revocations = Annotated[RevocationList, Depends(provided(REVOCATIONS))]
Successors = Annotated[FieldCipher, Depends(provided(REFRESH_SUCCESSORS))]
AuthConfig = Annotated[AuthSettings, Depends(_auth_settings)]
ClientIP = Annotated[str, Depends(_client_ip)]
UserAgent = Annotated[str | None, Depends(_user_agent)]
ProfileReader = Annotated[Principal, Depends(require_scope("profile:read"))]
ProfileWriter = Annotated[Principal, Depends(require_scope("profile:write"))]
UsersReader = Annotated[Principal, Depends(require_scope("users:read"))]
UsersWriter = Annotated[Principal, Depends(require_scope("users:write"))]


def _login_context(
    db: SessionDep,
    passwords: Passwords,
    throttle: Throttle,
    keys: Keys,
    settings: AuthConfig,
    client_ip: ClientIP,
    user_agent: UserAgent,
) -> LoginContext:
    return LoginContext(db, passwords, throttle, keys, settings, client_ip, user_agent)


Login = Annotated[LoginContext, Depends(_login_context)]

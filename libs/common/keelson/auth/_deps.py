"""FastAPI dependencies: `CurrentUser`, `require_role(...)`, `require_scope(...)`, `PUBLIC`.

Every route declares who may call it, and the OpenAPI document shows it: a guarded route
lists its security requirement (with the scopes `require_scope` asks for), a public one
carries `PUBLIC` (`openapi_extra=PUBLIC`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import OAuth2PasswordBearer

from keelson.auth._identity import DEFAULT_IDENTITY_MAX_AGE, verify_identity_headers
from keelson.auth._plugin import IDENTITY_KEY, IDENTITY_MAX_AGE, REVOCATIONS, TOKEN_VERIFIER
from keelson.auth._principal import Principal
from keelson.errors import Forbidden, Unauthorized
from keelson.logging import user_id_var
from keelson.monitor import set_user

__all__ = [
    "PUBLIC",
    "PUBLIC_ACCESS_KEY",
    "CurrentUser",
    "get_current_user",
    "require_role",
    "require_scope",
]

PUBLIC_ACCESS_KEY = "x-keelson-access"
# `openapi_extra` of a route anyone may call: it says so in the OpenAPI document.
PUBLIC: dict[str, Any] = {PUBLIC_ACCESS_KEY: "public"}

# Declared as OAuth2 password flow so Swagger's Authorize button logs in through auth.
_bearer = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token", auto_error=False)

Guard = Callable[..., Awaitable[Principal]]


async def get_current_user(
    request: Request, token: Annotated[str | None, Depends(_bearer)]
) -> Principal:
    """The caller, from the gateway-signed identity header or else from a bearer token."""
    container = request.app.state.container
    key = container.resolve_optional(IDENTITY_KEY)
    principal = None
    if key is not None:
        max_age = container.resolve_optional(IDENTITY_MAX_AGE) or DEFAULT_IDENTITY_MAX_AGE
        principal = verify_identity_headers(request.headers, key, max_age=max_age)
        revocations = container.resolve_optional(REVOCATIONS)
        # The gateway checked the token; a header captured before a logout and replayed
        # within its max age is caught here, from this process's mirror (no round trip).
        if (
            principal is not None
            and principal.jti
            and revocations is not None
            and revocations.revoked_here(principal.jti)
        ):
            raise Unauthorized("token revoked")
    if principal is None:
        if not token:
            raise Unauthorized("not authenticated")
        principal = await container.resolve(TOKEN_VERIFIER).verify(token)
    user_id_var.set(principal.user_id)
    set_user(principal.user_id)  # the id only: no email or name leaves for Sentry
    return principal


CurrentUser = Annotated[Principal, Depends(get_current_user)]


def require_role(*roles: str) -> Guard:
    """A dependency that admits a caller holding any one of `roles`; 403 otherwise."""
    wanted = frozenset(roles)

    async def check_role(principal: CurrentUser) -> Principal:
        if not principal.roles & wanted:
            raise Forbidden("this needs the role " + " or ".join(sorted(wanted)))
        return principal

    return check_role


def require_scope(*scopes: str) -> Guard:
    """A dependency that admits a caller holding every one of `scopes`; 403 otherwise."""
    wanted = frozenset(scopes)
    # Security() rather than Depends(): the scopes then appear in the route's OpenAPI
    # security requirement, where clients and the route-policy test read them. A default
    # value, not a local Annotated alias, which postponed annotations could not resolve.
    scoped = Security(get_current_user, scopes=sorted(wanted))

    async def check_scope(principal: Principal = scoped) -> Principal:
        missing = wanted - principal.scopes
        if missing:
            raise Forbidden("this needs the scope " + " ".join(sorted(missing)))
        return principal

    return check_scope

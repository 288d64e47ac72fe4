"""FastAPI dependencies: `CurrentUser`, `require_role(...)`, `require_scope(...)`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer

from keelson.auth._identity import DEFAULT_IDENTITY_MAX_AGE, verify_identity_headers
from keelson.auth._plugin import IDENTITY_KEY, IDENTITY_MAX_AGE, REVOCATIONS, TOKEN_VERIFIER
from keelson.auth._principal import Principal
from keelson.errors import Forbidden, Unauthorized
from keelson.logging import user_id_var

__all__ = ["CurrentUser", "get_current_user", "require_role", "require_scope"]

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

    async def check_scope(principal: CurrentUser) -> Principal:
        missing = wanted - principal.scopes
        if missing:
            raise Forbidden("this needs the scope " + " ".join(sorted(missing)))
        return principal

    return check_scope

"""The OAuth2 token endpoint's language (RFC 6749): grants in, §5.1 tokens or §5.2 errors out.

Only `/api/v1/auth/token` speaks it; every other route answers problem+json.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fastapi.responses import JSONResponse

from auth_service.login import LoginContext, log_in, refresh_session
from auth_service.schemas import TokenPair
from keelson.auth import RevocationList
from keelson.errors import (
    Forbidden,
    KeelsonError,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    Unprocessable,
)
from keelson.keys import FieldCipher

__all__ = [
    "GrantType",
    "OAuthError",
    "TokenRequest",
    "TokenRequestError",
    "authorization_server_metadata",
    "exchange_grant",
    "oauth_error",
]

# RFC 6749 §5.2 error codes used here, plus `temporarily_unavailable` from §4.1.2.1.
_INVALID_REQUEST = "invalid_request"
_INVALID_GRANT = "invalid_grant"
_UNSUPPORTED_GRANT_TYPE = "unsupported_grant_type"
_TEMPORARILY_UNAVAILABLE = "temporarily_unavailable"
_MAX_PARAMETER = 1024


class GrantType(StrEnum):
    PASSWORD = "password"  # noqa: S105
    REFRESH_TOKEN = "refresh_token"  # noqa: S105


class OAuthError(Exception):
    """An RFC 6749 §5.2 error: `error` code, a safe description, the HTTP status."""

    def __init__(
        self,
        error: str,
        description: str,
        *,
        status: int = 400,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        # Token responses, errors included, must not be cached (RFC 6749 §5.1).
        headers = {"Cache-Control": "no-store", "Pragma": "no-cache", **self.headers}
        body = {"error": self.error, "error_description": self.description}
        return JSONResponse(body, status_code=self.status, headers=headers)


class TokenRequestError(OAuthError):
    """The request itself is malformed (§5.2 `invalid_request`)."""

    def __init__(self, description: str) -> None:
        super().__init__(_INVALID_REQUEST, description)


def parse_grant(value: str | None) -> GrantType:
    if not value:
        raise TokenRequestError("grant_type is required")
    try:
        return GrantType(value)
    except ValueError:
        raise OAuthError(
            _UNSUPPORTED_GRANT_TYPE, "grant_type must be password or refresh_token"
        ) from None


def required(name: str, value: str | None) -> str:
    """A form parameter that must be present, bounded and free of control characters."""
    if not value:
        raise TokenRequestError(f"{name} is required")
    checked(name, value)
    return value


def checked(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    if len(value) > _MAX_PARAMETER or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise TokenRequestError(f"{name} is too long or holds control characters")
    return value


@dataclass(frozen=True)
class TokenRequest:
    """The form parameters of a token request, as sent (RFC 6749 §4.3.2, §6)."""

    grant_type: str | None
    username: str | None = None
    password: str | None = None
    refresh_token: str | None = None
    scope: str | None = None
    client_id: str | None = None


async def exchange_grant(
    login: LoginContext,
    request: TokenRequest,
    *,
    revocations: RevocationList,
    successors: FieldCipher,
) -> TokenPair:
    """A token pair for a `password` or `refresh_token` grant; `OAuthError` otherwise."""
    grant = parse_grant(request.grant_type)
    # Public clients identify themselves with `client_id` alone; any value is accepted.
    checked("client_id", request.client_id)
    scope = checked("scope", request.scope)
    try:
        if grant is GrantType.PASSWORD:
            return await log_in(
                login,
                email=required("username", request.username),
                password=required("password", request.password),
                requested_scope=scope,
            )
        return await refresh_session(
            login.db,
            refresh_token=required("refresh_token", request.refresh_token),
            keyring=login.keyring,
            revocations=revocations,
            settings=login.settings,
            successors=successors,
        )
    except KeelsonError as exc:
        raise oauth_error(exc) from None


def oauth_error(exc: KeelsonError) -> OAuthError:
    """The §5.2 form of an error a grant raised."""
    if isinstance(exc, Unauthorized | Forbidden):
        # Wrong credentials, a spent or unknown refresh token, an unverified address.
        return OAuthError(_INVALID_GRANT, exc.detail)
    if isinstance(exc, TooManyRequests | ServiceUnavailable):
        return OAuthError(
            _TEMPORARILY_UNAVAILABLE, exc.detail, status=exc.status, headers=exc.headers
        )
    if isinstance(exc, Unprocessable):
        return TokenRequestError(exc.detail)
    raise exc


def authorization_server_metadata(
    *, issuer: str, base_url: str, scopes: list[str]
) -> dict[str, Any]:
    """RFC 8414 metadata: where the token endpoint and the keys are, what they accept."""
    base = base_url.rstrip("/")
    return {
        "issuer": issuer,
        "token_endpoint": f"{base}/api/v1/auth/token",
        "jwks_uri": f"{base}/.well-known/jwks.json",
        "grant_types_supported": [grant.value for grant in GrantType],
        "response_types_supported": [],
        "scopes_supported": scopes,
        # Public clients: `client_id` is accepted and no client secret is asked for.
        "token_endpoint_auth_methods_supported": ["none"],
    }

"""RFC 8414 authorization server metadata, so OAuth2 clients find the token endpoint."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from auth_service.deps import AuthConfig
from auth_service.oauth import authorization_server_metadata
from keelson.auth import PUBLIC

__all__ = ["router"]

router = APIRouter(tags=["keys"])


@router.get(
    "/.well-known/oauth-authorization-server",
    summary="Authorization server metadata (RFC 8414)",
    openapi_extra=PUBLIC,
)
async def read_metadata(
    request: Request, response: Response, settings: AuthConfig
) -> dict[str, Any]:
    response.headers["Cache-Control"] = "public, max-age=3600"
    scopes = sorted({scope for scopes in settings.role_scopes.values() for scope in scopes})
    return authorization_server_metadata(
        issuer=settings.issuer,
        base_url=settings.public_url or str(request.base_url),
        scopes=scopes,
    )

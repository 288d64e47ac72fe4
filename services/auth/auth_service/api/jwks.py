"""The public signing keys (JWKS), at the well-known path and under the service prefix."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from auth_service.deps import Keys
from keelson.auth import PUBLIC

__all__ = ["public_router", "router"]

router = APIRouter(prefix="/api/v1/auth", tags=["keys"])
public_router = APIRouter(tags=["keys"])

# Short enough that a rotated-in key reaches caches quickly; verifiers also refetch on
# an unknown kid.
_CACHE_CONTROL = "public, max-age=300"


@router.get("/.well-known/jwks.json", openapi_extra=PUBLIC)
@public_router.get("/.well-known/jwks.json", openapi_extra=PUBLIC)
async def read_jwks(keys: Keys, response: Response) -> dict[str, Any]:
    response.headers["Cache-Control"] = _CACHE_CONTROL
    return keys.jwks()

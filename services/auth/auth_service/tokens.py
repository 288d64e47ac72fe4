"""Token material: signed access tokens and opaque, hashed single-use tokens."""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from auth_service.keyring import KeyRing
from auth_service.settings import AuthSettings

__all__ = ["AccessToken", "hash_token", "issue_access_token", "new_opaque_token"]


@dataclass(frozen=True)
class AccessToken:
    token: str
    jti: str
    expires_at: int
    scope: str


def new_opaque_token() -> tuple[str, bytes]:
    """A random URL-safe token (256 bits) and the hash that is all the database keeps."""
    token = secrets.token_urlsafe(32)
    return token, hash_token(token)


def hash_token(token: str) -> bytes:
    # A plain hash is enough here: the token has 256 random bits, nothing to brute-force.
    return hashlib.sha256(token.encode()).digest()


def issue_access_token(
    keyring: KeyRing,
    settings: AuthSettings,
    *,
    user_id: uuid.UUID,
    roles: Iterable[str],
    scopes: Iterable[str],
    session_id: uuid.UUID,
    email_verified: bool,
) -> AccessToken:
    now = int(time.time())
    jti = uuid.uuid4().hex
    scope = " ".join(sorted(set(scopes)))
    expires_at = now + settings.access_token_ttl_seconds
    claims = {
        "iss": settings.issuer,
        "aud": settings.audience,
        "sub": str(user_id),
        "roles": sorted(set(roles)),
        "scope": scope,
        "sid": str(session_id),
        "email_verified": email_verified,
        "jti": jti,
        "iat": now,
        "nbf": now,
        "exp": expires_at,
    }
    return AccessToken(keyring.sign(claims), jti, expires_at, scope)

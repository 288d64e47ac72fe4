"""Identity forwarded by the gateway in one HMAC-signed header, so upstreams need not re-verify.

The gateway verifies the bearer token once, drops any `x-keelson-*` headers the client
sent, and adds `x-keelson-identity: <payload>.<signature>`: the payload is unpadded
base64url of compact JSON (`sub`, `roles`, `scp`, `jti`, `sid`, `exp`, `iat`), the
signature unpadded base64url of HMAC-SHA256 over a versioned prefix and the encoded
payload. An upstream holding the same key (derived from the master key) trusts it; it can
be neither edited nor replayed after `max_age` seconds. One header instead of one per
field keeps the proxy's and the upstream's per-header work off the hot path.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any, TypeGuard

from keelson.auth._principal import Principal
from keelson.encoding import b64url_decode, b64url_encode
from keelson.errors import Unauthorized
from keelson.keys import KeyManager

__all__ = [
    "IDENTITY_HEADER",
    "IDENTITY_PURPOSE",
    "InvalidIdentity",
    "identity_key",
    "sign_identity",
    "verify_identity_headers",
]

IDENTITY_PURPOSE = "internal-identity"
IDENTITY_HEADER = "x-keelson-identity"
# Domain separation: this key signs nothing else, but a MAC over v2 bytes never verifies as v1.
_DOMAIN = b"keelson-identity/v2\n"
_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class InvalidIdentity(Unauthorized):
    """An identity header was present but its signature, age or content is wrong."""


def identity_key(keys: KeyManager) -> bytes:
    return keys.derive(IDENTITY_PURPOSE)


def sign_identity(principal: Principal, key: bytes, *, now: float | None = None) -> dict[str, str]:
    """The header that carries `principal` to an upstream (name in lower case)."""
    claims: dict[str, Any] = {
        "sub": principal.user_id,
        "roles": sorted(principal.roles),
        "scp": sorted(principal.scopes),
        "iat": int(time.time() if now is None else now),
    }
    if principal.jti:
        claims["jti"] = principal.jti
    if principal.session_id:
        claims["sid"] = principal.session_id
    if principal.expires_at is not None:
        claims["exp"] = principal.expires_at
    payload = b64url_encode(_compact(claims).encode())
    return {IDENTITY_HEADER: payload + "." + _signature(payload.encode(), key)}


def verify_identity_headers(
    headers: Mapping[str, str], key: bytes, *, max_age: int = 60, now: float | None = None
) -> Principal | None:
    """The forwarded principal; None when no identity was forwarded.

    `headers` must answer lower-case names (Starlette's and httpx's headers do).
    Raises `InvalidIdentity` when the header is present but does not hold.
    """
    token = headers.get(IDENTITY_HEADER)
    if token is None:
        return None
    payload, _, signature = token.partition(".")
    # Bytes, not str: compare_digest refuses non-ASCII str, and header values are latin-1.
    encoded = payload.encode()
    if not hmac.compare_digest(signature.encode(), _signature(encoded, key).encode()):
        raise InvalidIdentity("invalid identity signature")
    # Only signed bytes reach the parser; the checks still hold if the key ever leaks.
    try:
        claims = json.loads(b64url_decode(payload))
    except ValueError:  # bad base64, UTF-8 or JSON
        raise InvalidIdentity("invalid identity header") from None
    principal, issued = _principal(claims)
    current = time.time() if now is None else now
    if abs(current - issued) > max_age:
        raise InvalidIdentity("identity header expired")
    if principal.expires_at is not None and principal.expires_at < current:
        raise InvalidIdentity("token expired")
    return principal


def _principal(claims: object) -> tuple[Principal, int]:
    """The principal and issue time in `claims`; InvalidIdentity when a field is mistyped."""
    if not isinstance(claims, dict):
        raise InvalidIdentity("invalid identity header")
    user = claims.get("sub")
    roles = claims.get("roles")
    scopes = claims.get("scp")
    jti = claims.get("jti")
    session = claims.get("sid")
    expires = claims.get("exp")
    issued = claims.get("iat")
    if not (
        isinstance(user, str)
        and user
        and _strings(roles)
        and _strings(scopes)
        and (jti is None or isinstance(jti, str))
        and (session is None or isinstance(session, str))
        and (expires is None or _integer(expires))
        and _integer(issued)
    ):
        raise InvalidIdentity("invalid identity header")
    principal = Principal(
        user_id=user,
        roles=frozenset(roles),
        scopes=frozenset(scopes),
        jti=jti or None,
        session_id=session or None,
        expires_at=expires,
    )
    return principal, issued


def _strings(value: object) -> TypeGuard[list[str]]:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _integer(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _signature(payload: bytes, key: bytes) -> str:
    return b64url_encode(hmac.new(key, _DOMAIN + payload, hashlib.sha256).digest())

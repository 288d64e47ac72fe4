"""Identity forwarded by the gateway in HMAC-signed headers, so upstreams need not re-verify.

The gateway verifies the bearer token once, drops any `x-keelson-*` headers the client
sent, and adds these; an upstream holding the same key (derived from the master key)
trusts them. The signature covers every identity header and a timestamp, so headers can
be neither edited nor replayed after `max_age` seconds.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping

from keelson.auth._principal import Principal
from keelson.encoding import b64url_encode
from keelson.errors import Unauthorized
from keelson.keys import KeyManager

__all__ = [
    "IDENTITY_HEADERS",
    "IDENTITY_PURPOSE",
    "InvalidIdentity",
    "identity_key",
    "sign_identity",
    "verify_identity_headers",
]

IDENTITY_PURPOSE = "internal-identity"
_USER = "x-keelson-user"
_ROLES = "x-keelson-roles"
_SCOPES = "x-keelson-scopes"
_JTI = "x-keelson-jti"
_SESSION = "x-keelson-session"
_EXPIRES = "x-keelson-expires"
_TIMESTAMP = "x-keelson-identity-ts"
_SIGNATURE = "x-keelson-identity-signature"
IDENTITY_HEADERS = (_USER, _ROLES, _SCOPES, _JTI, _SESSION, _EXPIRES, _TIMESTAMP, _SIGNATURE)


class InvalidIdentity(Unauthorized):
    """Identity headers were present but their signature, age or content is wrong."""


def identity_key(keys: KeyManager) -> bytes:
    return keys.derive(IDENTITY_PURPOSE)


def sign_identity(principal: Principal, key: bytes, *, now: float | None = None) -> dict[str, str]:
    """The headers that carry `principal` to an upstream (names in lower case)."""
    headers = {
        _USER: principal.user_id,
        _ROLES: ",".join(sorted(principal.roles)),
        _SCOPES: " ".join(sorted(principal.scopes)),
        _JTI: principal.jti or "",
        _SESSION: principal.session_id or "",
        _EXPIRES: "" if principal.expires_at is None else str(principal.expires_at),
        _TIMESTAMP: str(int(time.time() if now is None else now)),
    }
    headers[_SIGNATURE] = _signature(headers, key)
    return headers


def verify_identity_headers(
    headers: Mapping[str, str], key: bytes, *, max_age: int = 60, now: float | None = None
) -> Principal | None:
    """The forwarded principal; None when no identity was forwarded.

    `headers` must answer lower-case names (Starlette's and httpx's headers do).
    Raises `InvalidIdentity` when a signature is present but does not hold.
    """
    signature = headers.get(_SIGNATURE)
    if signature is None:
        return None
    values = {name: headers.get(name, "") for name in IDENTITY_HEADERS[:-1]}
    if not hmac.compare_digest(signature, _signature(values, key)):
        raise InvalidIdentity("invalid identity signature")
    current = time.time() if now is None else now
    try:
        issued = int(values[_TIMESTAMP])
        expires = int(values[_EXPIRES]) if values[_EXPIRES] else None
    except ValueError:
        raise InvalidIdentity("invalid identity headers") from None
    if abs(current - issued) > max_age:
        raise InvalidIdentity("identity headers expired")
    if expires is not None and expires < current:
        raise InvalidIdentity("token expired")
    if not values[_USER]:
        raise InvalidIdentity("invalid identity headers")
    return Principal(
        user_id=values[_USER],
        roles=frozenset(filter(None, values[_ROLES].split(","))),
        scopes=frozenset(values[_SCOPES].split()),
        jti=values[_JTI] or None,
        session_id=values[_SESSION] or None,
        expires_at=expires,
    )


def _signature(values: Mapping[str, str], key: bytes) -> str:
    # JSON framing keeps field boundaries unambiguous whatever the values contain.
    message = json.dumps([values.get(name, "") for name in IDENTITY_HEADERS[:-1]]).encode()
    digest = hmac.new(key, b"keelson-identity/v1\n" + message, hashlib.sha256).digest()
    return b64url_encode(digest)

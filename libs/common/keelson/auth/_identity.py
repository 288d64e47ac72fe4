"""Identity forwarded by the gateway in one HMAC-signed header, so upstreams need not re-verify.

The gateway verifies the bearer token once, drops any `x-keelson-*` headers the client
sent, and adds `x-keelson-identity: <payload>.<signature>`. The payload is unpadded
base64url of a compact JSON array `[user, roles, scopes, jti, session, expires, issued]`
(absent values as null); the signature is unpadded base64url of HMAC-SHA256 over
`keelson-identity/v2\n` and the encoded payload. An upstream holding the same key (derived
from the master key) trusts it; it can be neither edited nor replayed after `max_age`
seconds. One header rather than one per field spares the proxy and every upstream the
per-header work on each request; a positional array is the smallest and quickest to parse,
and a new layout would take a new prefix.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Mapping

from keelson.auth._principal import Principal
from keelson.encoding import b64url_decode, b64url_encode
from keelson.errors import Unauthorized
from keelson.keys import KeyManager

__all__ = [
    "DEFAULT_IDENTITY_MAX_AGE",
    "IDENTITY_HEADER",
    "IDENTITY_PURPOSE",
    "InvalidIdentity",
    "identity_key",
    "sign_identity",
    "verify_identity_headers",
]

IDENTITY_PURPOSE = "internal-identity"
IDENTITY_HEADER = "x-keelson-identity"
DEFAULT_IDENTITY_MAX_AGE = 60
# Domain separation: this key signs nothing else, but a MAC over v2 bytes never verifies as v1.
_DOMAIN = b"keelson-identity/v2\n"
_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class InvalidIdentity(Unauthorized):
    """An identity header was present but its signature, age or content is wrong."""


def identity_key(keys: KeyManager) -> bytes:
    return keys.derive(IDENTITY_PURPOSE)


def sign_identity(principal: Principal, key: bytes, *, now: float | None = None) -> dict[str, str]:
    """The header that carries `principal` to an upstream (name in lower case)."""
    fields = [
        principal.user_id,
        sorted(principal.roles),
        sorted(principal.scopes),
        principal.jti,
        principal.session_id,
        principal.expires_at,
        int(time.time() if now is None else now),
    ]
    payload = b64url_encode(_compact(fields).encode())
    return {IDENTITY_HEADER: payload + "." + _signature(payload.encode(), key)}


def verify_identity_headers(
    headers: Mapping[str, str],
    key: bytes,
    *,
    max_age: int = DEFAULT_IDENTITY_MAX_AGE,
    now: float | None = None,
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
    if not hmac.compare_digest(signature.encode(), _signature(payload.encode(), key).encode()):
        raise InvalidIdentity("invalid identity signature")
    # Only signed bytes reach the parser; the checks still hold should the key ever leak.
    try:
        user, roles, scopes, jti, session, expires, issued = json.loads(
            b64url_decode(payload).decode()
        )
    except (ValueError, TypeError):  # bad base64, UTF-8 or JSON; not a 7-item array
        raise InvalidIdentity("invalid identity header") from None
    if not (
        type(user) is str
        and user
        and _strings(roles)
        and _strings(scopes)
        and (jti is None or type(jti) is str)
        and (session is None or type(session) is str)
        and (expires is None or type(expires) is int)  # `type is`: JSON true is no int here
        and type(issued) is int
    ):
        raise InvalidIdentity("invalid identity header")
    current = time.time() if now is None else now
    if abs(current - issued) > max_age:
        raise InvalidIdentity("identity header expired")
    if expires is not None and expires < current:
        raise InvalidIdentity("token expired")
    return Principal(
        user_id=user,
        roles=frozenset(roles),
        scopes=frozenset(scopes),
        jti=jti or None,
        session_id=session or None,
        expires_at=expires,
    )


def _strings(value: object) -> bool:
    return type(value) is list and all(type(item) is str for item in value)


def _signature(payload: bytes, key: bytes) -> str:
    return b64url_encode(hmac.digest(key, _DOMAIN + payload, "sha256"))

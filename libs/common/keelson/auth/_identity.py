"""Identity forwarded by the gateway in one Ed25519-signed header, so upstreams need not
re-verify the token, and only the gateway can say who is calling.

The gateway verifies the bearer token once, drops any `x-keelson-*` headers the client
sent, and adds `x-keelson-identity: <payload>.<signature>`. The payload is unpadded
base64url of a compact JSON array `[user, roles, scopes, jti, session, expires, issued]`
(absent values as null); the signature is unpadded base64url of an Ed25519 signature over
`keelson-identity/v3\n` and the encoded payload.

The key is asymmetric: only the gateway holds the private half (`identity.signing_key` or
`identity.signing_key_file`); every other service holds the public halves
(`identity.public_keys`) and so can check an identity but never make one. A compromised
service, or a peer that reached a service port, cannot forge a caller. With no keys
configured (tests, a bare development run) both halves are derived from the master key,
which every service holds, so that fallback protects nothing against a service: `keelson
up` and the deployment manifests configure a real pair, and staging and production refuse
to start without `identity.public_keys`.

A header can be neither edited nor replayed after `max_age` seconds. One header rather than
one per field spares the proxy and every upstream the per-header work on each request; a
positional array is the smallest and quickest to parse, and a new layout takes a new prefix.
A verified header is remembered (by its whole text, signature included) until it ages out,
so an upstream checks a signature about as often per caller as the gateway signs one (once
its last is a sixth of the max age old: every 10 s by default).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from keelson.auth._principal import Principal
from keelson.encoding import b64url_decode, b64url_encode
from keelson.errors import Unauthorized
from keelson.keys import KeyManager

if TYPE_CHECKING:
    from keelson.config import KeelsonSettings

__all__ = [
    "DEFAULT_IDENTITY_MAX_AGE",
    "IDENTITY_HEADER",
    "IDENTITY_PURPOSE",
    "IdentityKey",
    "IdentityVerifier",
    "InvalidIdentity",
    "identity_key",
    "identity_signer",
    "identity_verifier",
    "sign_identity",
    "verify_identity_headers",
]

IDENTITY_PURPOSE = "internal-identity/ed25519"
IDENTITY_HEADER = "x-keelson-identity"
DEFAULT_IDENTITY_MAX_AGE = 60
# Domain separation: v3 is Ed25519; v2 (an HMAC keyed from the master key) is refused.
_DOMAIN = b"keelson-identity/v3\n"
_SEEN_LIMIT = 4096
_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class InvalidIdentity(Unauthorized):
    """An identity header was present but its signature, age or content is wrong."""


class IdentityVerifier:
    """Checks identity headers against the gateway's public keys (the first is current;
    the others still verify during a rotation)."""

    def __init__(self, public_keys: Sequence[Ed25519PublicKey]) -> None:
        if not public_keys:
            raise ValueError("at least one public key is needed")
        self._public = tuple(public_keys)
        self._raw = frozenset(_raw_public(k) for k in self._public)
        # Header text -> (principal, issued, expires) for headers already verified.
        self._seen: dict[str, tuple[Principal, int, int | None]] = {}

    @classmethod
    def from_text(cls, keys: Sequence[str]) -> IdentityVerifier:
        """From unpadded base64url of raw 32-byte Ed25519 public keys."""
        return cls([Ed25519PublicKey.from_public_bytes(b64url_decode(k)) for k in keys])

    @property
    def public_keys(self) -> list[str]:
        """The public keys as `identity.public_keys` takes them."""
        return [b64url_encode(_raw_public(k)) for k in self._public]

    def trusts(self, public_key: str) -> bool:
        return b64url_decode(public_key) in self._raw

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdentityVerifier) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def verify(
        self,
        headers: Mapping[str, str],
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
        seen = self._seen.get(token)
        if seen is None:
            seen = self._check(token)
            if len(self._seen) >= _SEEN_LIMIT:
                self._seen.clear()
            self._seen[token] = seen
        principal, issued, expires = seen
        current = time.time() if now is None else now
        if abs(current - issued) > max_age:
            raise InvalidIdentity("identity header expired")
        if expires is not None and expires < current:
            raise InvalidIdentity("token expired")
        return principal

    def _check(self, token: str) -> tuple[Principal, int, int | None]:
        payload, _, signature = token.partition(".")
        try:
            raw_signature = b64url_decode(signature)
        except ValueError:
            raise InvalidIdentity("invalid identity signature") from None
        signed = _DOMAIN + payload.encode("latin-1", "replace")
        for key in self._public:
            try:
                key.verify(raw_signature, signed)
                break
            except InvalidSignature:
                continue
        else:
            raise InvalidIdentity("invalid identity signature")
        # Only signed bytes reach the parser; the checks still hold should a key ever leak.
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
            and (expires is None or type(expires) is int)  # `type is`: JSON true is no int
            and type(issued) is int
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
        return principal, issued, expires


class IdentityKey(IdentityVerifier):
    """The gateway's signing key (it verifies its own headers too)."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        super().__init__([private.public_key()])
        self._private = private

    @classmethod
    def generate(cls) -> IdentityKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_text(cls, keys: Sequence[str]) -> IdentityKey:
        """From the unpadded base64url of one raw 32-byte private key (as `secret_text`)."""
        (seed,) = keys
        return cls(Ed25519PrivateKey.from_private_bytes(b64url_decode(seed.strip())))

    def secret_text(self) -> str:
        """The private key as `identity.signing_key` takes it: keep it secret."""
        raw = self._private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return b64url_encode(raw)

    @property
    def public_key(self) -> str:
        return self.public_keys[0]

    def sign(self, principal: Principal, *, now: float | None = None) -> dict[str, str]:
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
        signature = b64url_encode(self._private.sign(_DOMAIN + payload.encode()))
        return {IDENTITY_HEADER: payload + "." + signature}


def identity_key(keys: KeyManager) -> IdentityKey:
    """The development pair, derived from the master key (see the module's docstring)."""
    return IdentityKey(Ed25519PrivateKey.from_private_bytes(keys.derive(IDENTITY_PURPOSE)))


def identity_signer(settings: KeelsonSettings) -> IdentityKey:
    """The gateway's key: `identity.signing_key`, else the file `identity.signing_key_file`,
    else the development pair; refused if configured public keys do not include it."""
    config = settings.identity
    if config.signing_key is not None:
        key = IdentityKey.from_text([config.signing_key.get_secret_value()])
    elif config.signing_key_file is not None:
        key = IdentityKey.from_text([config.signing_key_file.read_text()])
    else:
        key = identity_key(KeyManager(settings.master_key.get_secret_value()))
    if config.public_keys and not identity_verifier(settings).trusts(key.public_key):
        raise ValueError(
            "identity: the signing key's public half is not among identity.public_keys"
        )
    return key


def identity_verifier(settings: KeelsonSettings) -> IdentityVerifier:
    """What a service checks identity headers with: `identity.public_keys`, else the
    public half of the development pair."""
    keys = settings.identity.public_keys
    if keys:
        return IdentityVerifier.from_text(keys)
    development = identity_key(KeyManager(settings.master_key.get_secret_value()))
    return IdentityVerifier.from_text(development.public_keys)


def sign_identity(
    principal: Principal, key: IdentityKey, *, now: float | None = None
) -> dict[str, str]:
    """The header that carries `principal` to an upstream (name in lower case)."""
    return key.sign(principal, now=now)


def verify_identity_headers(
    headers: Mapping[str, str],
    verifier: IdentityVerifier,
    *,
    max_age: int = DEFAULT_IDENTITY_MAX_AGE,
    now: float | None = None,
) -> Principal | None:
    """`verifier.verify(headers, ...)`: None when no identity was forwarded."""
    return verifier.verify(headers, max_age=max_age, now=now)


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _strings(value: object) -> bool:
    return type(value) is list and all(type(item) is str for item in value)

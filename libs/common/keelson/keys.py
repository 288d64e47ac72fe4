"""The key manager: sub-keys derived per purpose (HKDF), field encryption, JWT signing keys."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keelson.encoding import b64url_decode, b64url_encode

if TYPE_CHECKING:
    from keelson.config import KeelsonSettings

__all__ = [
    "ACTION_TOKEN_PURPOSE",
    "DecryptionError",
    "FieldCipher",
    "KeyManager",
    "SigningKey",
    "open_action_token",
    "seal_action_token",
]

# The purpose of the key that seals emailed action tokens in events (auth seals,
# notifications opens), so they never travel or rest in plain text.
ACTION_TOKEN_PURPOSE = "events:action-token"  # noqa: S105 (a key purpose)


class DecryptionError(ValueError):
    """The ciphertext was tampered with, or no known key opens it."""


class KeyManager:
    """Derives independent keys from one master secret; older masters still decrypt."""

    def __init__(self, master_key: str | bytes, *, previous: tuple[str | bytes, ...] = ()) -> None:
        self._masters = [k.encode() if isinstance(k, str) else k for k in (master_key, *previous)]

    @classmethod
    def from_settings(cls, settings: KeelsonSettings) -> KeyManager:
        """The current `master_key`, with `previous_master_keys` still able to decrypt."""
        return cls(
            settings.master_key.get_secret_value(),
            previous=tuple(k.get_secret_value() for k in settings.previous_master_keys),
        )

    def derive(self, purpose: str, *, length: int = 32, generation: int = 0) -> bytes:
        """A key for `purpose` from the master of `generation` (0 = current)."""
        return HKDF(
            algorithm=hashes.SHA256(), length=length, salt=b"keelson/v1", info=purpose.encode()
        ).derive(self._masters[generation])

    def field_cipher(self, purpose: str) -> FieldCipher:
        keys = [self.derive(f"field:{purpose}", generation=g) for g in range(len(self._masters))]
        return FieldCipher(keys)


class FieldCipher:
    """AES-256-GCM for columns; the token names its key, so rotation needs no re-encrypt first."""

    def __init__(self, keys: list[bytes]) -> None:
        self._by_id = {hashlib.sha256(k).digest()[:4]: AESGCM(k) for k in keys}
        self._current_id = hashlib.sha256(keys[0]).digest()[:4]

    def encrypt(self, plaintext: str, *, associated: bytes = b"") -> str:
        nonce = os.urandom(12)
        sealed = self._by_id[self._current_id].encrypt(nonce, plaintext.encode(), associated)
        return b64url_encode(self._current_id + nonce + sealed)

    def decrypt(self, token: str, *, associated: bytes = b"") -> str:
        try:
            raw = b64url_decode(token)
            key_id, nonce, sealed = raw[:4], raw[4:16], raw[16:]
            return self._by_id[key_id].decrypt(nonce, sealed, associated).decode()
        except Exception as exc:
            raise DecryptionError("cannot decrypt field") from exc

    def needs_rotation(self, token: str) -> bool:
        """Whether `token` was sealed under an older key (or is not a token at all)."""
        try:
            raw = b64url_decode(token)
        except ValueError:
            return True
        return raw[:4] != self._current_id


@dataclass(frozen=True)
class SigningKey:
    """An ES256 key pair with its `kid` (RFC 7638 thumbprint)."""

    kid: str
    private_pem: str

    @classmethod
    def generate(cls) -> SigningKey:
        private = ec.generate_private_key(ec.SECP256R1())
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        return cls(kid=_thumbprint(_public_numbers(private)), private_pem=pem)

    @classmethod
    def from_pem(cls, pem: str) -> SigningKey:
        private = serialization.load_pem_private_key(pem.encode(), password=None)
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        return cls(kid=_thumbprint(_public_numbers(private)), private_pem=pem)

    def public_jwk(self) -> dict[str, Any]:
        private = serialization.load_pem_private_key(self.private_pem.encode(), password=None)
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        jwk = _public_numbers(private)
        return {**jwk, "kid": self.kid, "use": "sig", "alg": "ES256"}


def _public_numbers(private: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    numbers = private.public_key().public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url_encode(numbers.x.to_bytes(32, "big")),
        "y": b64url_encode(numbers.y.to_bytes(32, "big")),
    }


def _thumbprint(jwk: dict[str, str]) -> str:
    canonical = json.dumps(
        {k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True
    )
    return b64url_encode(hashlib.sha256(canonical.encode()).digest())


def seal_action_token(keys: KeyManager, token: str, *, event_type: str, user_id: str) -> str:
    """`token` encrypted for the notifications service, bound to its event type and user."""
    cipher = keys.field_cipher(ACTION_TOKEN_PURPOSE)
    return cipher.encrypt(token, associated=f"{event_type}:{user_id}".encode())


def open_action_token(keys: KeyManager, sealed: str, *, event_type: str, user_id: str) -> str:
    """The token `seal_action_token` sealed; DecryptionError if tampered with or moved."""
    cipher = keys.field_cipher(ACTION_TOKEN_PURPOSE)
    return cipher.decrypt(sealed, associated=f"{event_type}:{user_id}".encode())

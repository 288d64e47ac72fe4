"""Idempotency keys: the client's header, the fingerprint of its request, the provider's key."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from keelson.errors import BadRequest, PreconditionRequired

__all__ = ["fingerprint", "provider_key", "require_key"]

MAX_KEY_LENGTH = 255


def require_key(value: str | None) -> str:
    """The Idempotency-Key header: required (428), 1-255 printable ASCII characters."""
    if value is None:
        raise PreconditionRequired("this request needs an Idempotency-Key header")
    if not value or len(value) > MAX_KEY_LENGTH or not all(" " < c < "\x7f" for c in value):
        raise BadRequest("Idempotency-Key must be 1-255 printable ASCII characters, no spaces")
    return value


def fingerprint(body: dict[str, Any]) -> str:
    """Equal for equal requests, whatever the order of their fields."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def provider_key(*parts: str) -> str:
    """The key sent to the provider: scoped to the user and purpose, fixed length."""
    digest = hashlib.sha256("\x00".join(parts).encode()).hexdigest()
    return f"keelson-{digest[:56]}"

"""Helpers of the payments tests: signed callers, Stripe-signed events, new intents."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import httpx

from keelson.auth import Principal, identity_key, sign_identity
from keelson.keys import KeyManager
from payments_service.settings import Settings

SANDBOX_SECRET = "whsec_sandbox_keelson_tests"


def caller(settings: Settings, user_id: str | None = None, *roles: str) -> dict[str, str]:
    """Headers of a caller as the gateway forwards it (the signed identity header)."""
    key = identity_key(KeyManager(settings.master_key.get_secret_value()))
    principal = Principal(user_id=user_id or uuid.uuid4().hex, roles=frozenset(roles or ["user"]))
    return sign_identity(principal, key)


def sign(payload: bytes, secret: str, *, at: int | None = None) -> str:
    """A Stripe-Signature header for `payload` (Stripe's published scheme)."""
    timestamp = int(time.time()) if at is None else at
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def stripe_event(
    event_type: str, obj: dict[str, Any], *, created: int | None = None, event_id: str | None = None
) -> bytes:
    return json.dumps(
        {
            "id": event_id or f"evt_{uuid.uuid4().hex[:20]}",
            "object": "event",
            "type": event_type,
            "created": int(time.time()) if created is None else created,
            "livemode": False,
            "data": {"object": obj},
        }
    ).encode()


async def new_intent(
    client: httpx.AsyncClient, headers: dict[str, str], amount: int = 1000, **body: Any
) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/payments/intents",
        json={"amount": amount, "currency": "usd", **body},
        headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
    )
    assert response.status_code == 201, response.text
    intent: dict[str, Any] = response.json()
    return intent

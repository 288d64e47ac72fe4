"""Function- and object-level authorisation, walked over every operation of the gateway's
merged OpenAPI, so that a route added later is checked without anyone remembering to.

- Function level: an ordinary user may call the operations in `USER_OPERATIONS` and the
  public ones; every other operation must refuse them with 403. A new operation is thus
  admin-only for this test until someone lists it here as a user's.
- Object level: user A makes one of everything a user can own (payment intent, customer,
  notification, webhook endpoint). User B then calls every operation with a path
  parameter on A's ids, with a valid body: each must answer 403 or 404 (never 2xx, never
  a validation error, which would say nothing about ownership); B's lists show none of
  A's ids; and A's objects are as they were.

docs/security.md lists the cases with the command that reproduces them.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import pytest

from .conftest import RunningSuite

pytestmark = pytest.mark.timeout(600)

# What a user (role `user`, its default scopes) may call; every other operation that is
# not public must answer them 403.
USER_OPERATIONS = frozenset(
    {
        "GET /api/v1/auth/me",
        "PATCH /api/v1/auth/me",
        "POST /api/v1/auth/logout",
        "POST /api/v1/handshake",
        "POST /api/v1/payments/customers",
        "POST /api/v1/payments/intents",
        "GET /api/v1/payments/intents",
        "GET /api/v1/payments/intents/{intent_id}",
        "POST /api/v1/payments/intents/{intent_id}/cancel",
        "POST /api/v1/payments/intents/{intent_id}/refunds",
        "POST /api/v1/notifications",
        "GET /api/v1/notifications",
        "GET /api/v1/notifications/{notification_id}",
        "GET /api/v1/notifications/preferences",
        "PUT /api/v1/notifications/preferences",
        "POST /api/v1/notifications/webhooks",
        "GET /api/v1/notifications/webhooks",
        "DELETE /api/v1/notifications/webhooks/{endpoint_id}",
        "POST /api/v1/notifications/webhooks/{endpoint_id}/test",
    }
)
# Valid bodies for the operations with a path parameter (B's calls must fail on
# ownership, not on validation).
BODIES: dict[str, Any] = {
    "POST /api/v1/payments/intents/{intent_id}/refunds": {"amount": 1},
    "PATCH /api/v1/auth/users/{user_id}": {"name": "renamed by another user"},
}
PUBLIC_IP_WEBHOOK = "https://93.184.215.14/keelson-hook"


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]


def _public(operation: dict[str, Any]) -> bool:
    return operation.get("x-keelson-access") == "public"


def test_every_operation_not_listed_for_users_refuses_them(suite: RunningSuite) -> None:
    """Sent: every operation of the merged OpenAPI that is neither public nor in
    USER_OPERATIONS, as an ordinary user, with ids that belong to nobody. Holds: 403 from
    each (not 404, not 401: the role is what refuses them)."""
    _, user = suite.user("b")
    document = suite.merged_openapi()
    refused = []
    with suite.client() as client:
        for method, path, operation in _operations(document):
            name = f"{method} {path}"
            if _public(operation) or name in USER_OPERATIONS:
                continue
            if path.startswith(("/health", "/openapi", "/docs", "/redoc")):
                continue
            target = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)
            answer = client.request(method, target, headers=user, json=BODIES.get(name, {}))
            assert answer.status_code == 403, (name, answer.status_code, answer.text[:200])
            assert answer.headers["content-type"] == "application/problem+json", name
            refused.append(name)
    # The admin routes known today, at least: the walk did walk.
    for known in (
        "GET /api/v1/auth/users",
        "GET /api/v1/logs",
        "GET /api/v1/admin/plugins",
        "POST /api/v1/admin/reload",
        "GET /api/v1/payments/intents/{intent_id}/events",
        "POST /api/v1/payments/sandbox/intents/{intent_id}/succeed",
        "POST /api/v1/notifications/{notification_id}/retry",
        "GET /api/v1/notifications/dead-letters",
    ):
        assert known in refused, known


def _owned_objects(client: httpx.Client, owner: dict[str, str], owner_id: str) -> dict[str, str]:
    """One of everything user A can own, by the path parameter that names it."""
    intent = client.post(
        "/api/v1/payments/intents",
        headers={**owner, "Idempotency-Key": uuid.uuid4().hex},
        json={"amount": 1234, "currency": "eur", "description": "A's order"},
    )
    assert intent.status_code == 201, intent.text
    customer = client.post(
        "/api/v1/payments/customers",
        headers={**owner, "Idempotency-Key": uuid.uuid4().hex},
        json={},
    )
    assert customer.status_code in (200, 201), customer.text
    email = client.get("/api/v1/auth/me", headers=owner).json()["email"]
    notification = client.post(  # to oneself: a user may send to no one else
        "/api/v1/notifications",
        headers={**owner, "Idempotency-Key": uuid.uuid4().hex},
        json={"channel": "email", "to": email, "subject": "A's", "body": "A's"},
    )
    assert notification.status_code in (200, 202), notification.text
    endpoint = client.post(
        "/api/v1/notifications/webhooks", headers=owner, json={"url": PUBLIC_IP_WEBHOOK}
    )
    assert endpoint.status_code == 201, endpoint.text
    return {
        "intent_id": intent.json()["id"],
        "customer_id": customer.json()["id"],
        "notification_id": notification.json()["id"],
        "endpoint_id": endpoint.json()["id"],
        "user_id": owner_id,
    }


def test_a_user_reaches_nothing_of_another_user(suite: RunningSuite) -> None:
    """Sent: as user B, every operation with a path parameter, on user A's objects (intent,
    customer, notification, webhook endpoint, A's user id), with a valid body; then every
    list B may read. Holds: 403 or 404 problem+json each; no list of B's shows any of A's
    ids; A's intent and endpoint are unchanged afterwards."""
    a_id, a = suite.user("a")
    _, b = suite.user("b")
    document = suite.merged_openapi()
    with suite.client() as client:
        owned = _owned_objects(client, a, a_id)
        before = client.get(f"/api/v1/payments/intents/{owned['intent_id']}", headers=a).json()
        walked = []
        for method, path, operation in _operations(document):
            names = re.findall(r"\{([^}]+)\}", path)
            if not names or _public(operation):
                continue
            unknown = [n for n in names if n not in owned]
            assert not unknown, f"{method} {path}: give user A a {unknown} in _owned_objects"
            target = re.sub(r"\{([^}]+)\}", lambda m: owned[m.group(1)], path)
            name = f"{method} {path}"
            answer = client.request(
                method,
                target,
                headers={**b, "Idempotency-Key": uuid.uuid4().hex},
                json=BODIES.get(name, {}),
            )
            assert answer.status_code in (403, 404), (name, answer.status_code, answer.text[:200])
            assert answer.headers["content-type"] == "application/problem+json", name
            walked.append(name)
        for method, path, _operation in _operations(document):
            name = f"{method} {path}"
            if method != "GET" or "{" in path or name not in USER_OPERATIONS:
                continue
            seen = client.get(path, headers=b)
            assert seen.status_code == 200, (name, seen.text[:200])
            for what, ident in owned.items():
                assert ident not in seen.text, (name, what)
            walked.append(name)
        after = client.get(f"/api/v1/payments/intents/{owned['intent_id']}", headers=a).json()
        endpoints = client.get("/api/v1/notifications/webhooks", headers=a).json()
    assert after == before
    assert [e["id"] for e in endpoints] == [owned["endpoint_id"]]
    for known in (
        "GET /api/v1/payments/intents/{intent_id}",
        "POST /api/v1/payments/intents/{intent_id}/cancel",
        "POST /api/v1/payments/intents/{intent_id}/refunds",
        "GET /api/v1/notifications/{notification_id}",
        "POST /api/v1/notifications/{notification_id}/retry",
        "DELETE /api/v1/notifications/webhooks/{endpoint_id}",
        "POST /api/v1/notifications/webhooks/{endpoint_id}/test",
        "GET /api/v1/auth/users/{user_id}",
        "PATCH /api/v1/auth/users/{user_id}",
        "DELETE /api/v1/auth/users/{user_id}",
        "GET /api/v1/payments/intents",
        "GET /api/v1/notifications",
        "GET /api/v1/notifications/webhooks",
    ):
        assert known in walked, known

"""Stripe-signed webhooks: verified, applied once, safe out of order (sandbox secret)."""

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
from payments_testkit import SANDBOX_SECRET, new_intent, sign, stripe_event
from prometheus_client import REGISTRY

URL = "/api/v1/payments"
HOOK = f"{URL}/webhooks/stripe"


def post(client: httpx.AsyncClient, payload: bytes, signature: str | None = None):
    headers = {"Content-Type": "application/json"}
    headers["Stripe-Signature"] = signature or sign(payload, SANDBOX_SECRET)
    return client.post(HOOK, content=payload, headers=headers)


def intent_object(intent: dict[str, Any], status: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": intent["provider_id"],
        "object": "payment_intent",
        "status": status,
        "amount": intent["amount"],
        "currency": intent["currency"],
        **extra,
    }


async def state(client: httpx.AsyncClient, intent: dict, headers: dict) -> dict[str, Any]:
    response = await client.get(f"{URL}/intents/{intent['id']}", headers=headers)
    body: dict[str, Any] = response.json()
    return body


async def test_a_valid_event_is_applied_and_a_replay_changes_nothing(
    client: httpx.AsyncClient, user: Callable, outbox: Callable
) -> None:
    me = user()
    intent = await new_intent(client, me, 900)
    payload = stripe_event(
        "payment_intent.succeeded", intent_object(intent, "succeeded", amount_received=900)
    )
    first = await post(client, payload)
    assert first.status_code == 200 and first.json()["outcome"] == "applied"
    replay = await post(client, payload)
    assert replay.status_code == 200 and replay.json()["outcome"] == "duplicate"
    assert (await state(client, intent, me))["status"] == "succeeded"
    assert len(await outbox("payments.payment_succeeded", intent["id"])) == 1


async def test_bad_missing_and_stale_signatures_are_refused(
    client: httpx.AsyncClient, user: Callable
) -> None:
    me = user()
    intent = await new_intent(client, me)
    payload = stripe_event("payment_intent.succeeded", intent_object(intent, "succeeded"))
    wrong = await post(client, payload, sign(payload, "whsec_not_the_secret"))
    stale = await post(client, payload, sign(payload, SANDBOX_SECRET, at=int(time.time()) - 301))
    tampered = await post(
        client, payload.replace(b"succeeded", b"canceled"), sign(payload, SANDBOX_SECRET)
    )
    missing = await client.post(HOOK, content=payload)
    for response in (wrong, stale, tampered, missing):
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/problem+json"
        assert SANDBOX_SECRET not in response.text
    assert (await state(client, intent, me))["status"] == "requires_payment_method"


async def test_an_older_event_never_moves_the_state_back(
    client: httpx.AsyncClient, user: Callable, outbox: Callable
) -> None:
    me = user()
    intent = await new_intent(client, me)
    now = int(time.time())
    succeeded = stripe_event(
        "payment_intent.succeeded", intent_object(intent, "succeeded"), created=now
    )
    processing = stripe_event(
        "payment_intent.processing", intent_object(intent, "processing"), created=now - 5
    )
    failed = stripe_event(
        "payment_intent.payment_failed",
        intent_object(
            intent,
            "requires_payment_method",
            last_payment_error={"code": "card_declined", "decline_code": "x"},
        ),
        created=now - 10,
    )
    assert (await post(client, succeeded)).json()["outcome"] == "applied"
    assert (await post(client, processing)).json()["outcome"] == "stale"
    assert (await post(client, failed)).json()["outcome"] == "stale"
    assert (await state(client, intent, me))["status"] == "succeeded"
    assert await outbox("payments.payment_failed", intent["id"]) == []


async def test_a_late_processing_after_a_newer_failure_is_stale(
    client: httpx.AsyncClient, user: Callable
) -> None:
    me = user()
    intent = await new_intent(client, me)
    now = int(time.time())
    failed = stripe_event(
        "payment_intent.payment_failed",
        intent_object(
            intent, "requires_payment_method", last_payment_error={"code": "card_declined"}
        ),
        created=now,
    )
    processing = stripe_event(
        "payment_intent.processing", intent_object(intent, "processing"), created=now - 3
    )
    assert (await post(client, failed)).json()["outcome"] == "applied"
    assert (await post(client, processing)).json()["outcome"] == "stale"
    assert (await state(client, intent, me))["status"] == "failed"


async def test_the_same_event_delivered_twice_at_once_applies_once(
    client: httpx.AsyncClient, user: Callable, outbox: Callable
) -> None:
    me = user()
    intent = await new_intent(client, me)
    payload = stripe_event("payment_intent.succeeded", intent_object(intent, "succeeded"))
    responses = await asyncio.gather(*(post(client, payload) for _ in range(5)))
    outcomes = sorted(r.json()["outcome"] for r in responses)
    assert outcomes == ["applied"] + ["duplicate"] * 4
    assert len(await outbox("payments.payment_succeeded", intent["id"])) == 1


async def test_charge_refunded_and_dispute(
    client: httpx.AsyncClient, user: Callable, outbox: Callable
) -> None:
    me, admin = user(), user("admin")
    intent = await new_intent(client, me, 1000)
    await client.post(f"{URL}/sandbox/intents/{intent['id']}/succeed", headers=admin)
    charge = {
        "id": f"ch_{uuid.uuid4().hex[:12]}",
        "object": "charge",
        "payment_intent": intent["provider_id"],
        "amount": 1000,
        "amount_refunded": 250,
    }
    assert (await post(client, stripe_event("charge.refunded", charge))).json()[
        "outcome"
    ] == "applied"
    current = await state(client, intent, me)
    assert (current["status"], current["amount_refunded"]) == ("partially_refunded", 250)
    dispute = {
        "id": "dp_1",
        "object": "dispute",
        "payment_intent": intent["provider_id"],
        "amount": 750,
        "currency": "usd",
        "reason": "fraudulent",
    }
    await post(client, stripe_event("charge.dispute.created", dispute))
    [opened] = await outbox("payments.dispute_opened", intent["id"])
    assert opened["data"]["reason"] == "fraudulent" and opened["data"]["amount"] == 750
    [refunded] = await outbox("payments.refund_succeeded", intent["id"])
    assert refunded["data"]["amount"] == 250
    kinds = [
        e["kind"]
        for e in (await client.get(f"{URL}/intents/{intent['id']}/events", headers=admin)).json()
    ]
    assert kinds.count("provider_event") == 3 and "dispute_opened" in kinds


async def test_unhandled_and_unknown_events_are_acknowledged(client: httpx.AsyncClient) -> None:
    other = await post(client, stripe_event("customer.created", {"id": "cus_1"}))
    assert other.json()["outcome"] == "ignored"
    unknown = await post(
        client,
        stripe_event(
            "payment_intent.succeeded",
            {"id": "pi_elsewhere", "status": "succeeded", "amount": 1, "currency": "usd"},
        ),
    )
    assert unknown.json()["outcome"] == "unknown_intent"


async def test_bodies_are_bounded_and_must_be_events(client: httpx.AsyncClient) -> None:
    huge = b"{" + b" " * (600 * 1024) + b"}"
    assert (await post(client, huge)).status_code == 413
    not_event = json.dumps({"hello": "world"}).encode()
    assert (await post(client, not_event)).status_code == 400


async def test_processing_is_a_state_change_with_its_ledger_row_and_event(
    client: httpx.AsyncClient, user: Callable, outbox: Callable
) -> None:
    me = user()
    intent = await new_intent(client, me, 1200)
    now = int(time.time())
    processing = stripe_event(
        "payment_intent.processing", intent_object(intent, "processing"), created=now
    )
    applied = await post(client, processing)
    assert applied.json()["outcome"] == "applied"
    assert (await post(client, processing)).json()["outcome"] == "duplicate"
    assert (await state(client, intent, me))["status"] == "processing"
    [event] = await outbox("payments.payment_processing", intent["id"])
    assert (
        event["data"]["amount"] == 1200 and event["data"]["provider_ref"] == intent["provider_id"]
    )
    ledger = (
        await client.get(f"{URL}/intents/{intent['id']}/events", headers=user("admin"))
    ).json()
    moves = [row for row in ledger if row["kind"] == "status_changed"]
    assert [(row["from_status"], row["to_status"]) for row in moves] == [
        ("requires_payment_method", "processing")
    ]
    # Then success: one more move, one more event; `processing` is not announced twice.
    succeeded = stripe_event(
        "payment_intent.succeeded", intent_object(intent, "succeeded"), created=now + 1
    )
    assert (await post(client, succeeded)).json()["outcome"] == "applied"
    assert len(await outbox("payments.payment_processing", intent["id"])) == 1
    assert len(await outbox("payments.payment_succeeded", intent["id"])) == 1


async def test_deliveries_are_answered_with_the_services_headers_and_counted_by_route(
    client: httpx.AsyncClient, user: Callable
) -> None:
    # Answered by a layer in front of FastAPI's routing: still behind the service's own
    # middleware (request id, security headers, metrics under the route's template).
    def counted() -> float:
        return (
            REGISTRY.get_sample_value(
                "http_requests_total",
                {"service": "payments", "method": "POST", "route": HOOK, "status": "200"},
            )
            or 0.0
        )

    before = counted()
    intent = await new_intent(client, user())
    payload = stripe_event("payment_intent.succeeded", intent_object(intent, "succeeded"))
    response = await post(client, payload, None)

    assert response.status_code == 200
    assert response.json() == {"received": True, "outcome": "applied"}
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert counted() == before + 1
    other_method = await client.get(HOOK)
    assert other_method.status_code == 405
    assert other_method.headers["content-type"] == "application/problem+json"

"""Refunds: summed, bounded by the captured amount, idempotent, safe when they race."""

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import httpx
from payments_testkit import new_intent
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

URL = "/api/v1/payments"


async def paid_intent(client: httpx.AsyncClient, me: dict, admin: dict, amount: int) -> dict:
    intent = await new_intent(client, me, amount)
    done = await client.post(f"{URL}/sandbox/intents/{intent['id']}/succeed", headers=admin)
    assert done.status_code == 200
    return intent


def refund(client: httpx.AsyncClient, intent: dict, me: dict, key: str | None = None, **body: Any):
    return client.post(
        f"{URL}/intents/{intent['id']}/refunds",
        json=body,
        headers={**me, "Idempotency-Key": key or uuid.uuid4().hex},
    )


async def test_partial_refunds_add_up_to_refunded(
    client: httpx.AsyncClient, user: Callable, outbox: Callable
) -> None:
    me, admin = user(), user("admin")
    intent = await paid_intent(client, me, admin, 1000)
    first = await refund(client, intent, me, amount=300, reason="requested_by_customer")
    assert first.status_code == 201, first.text
    assert first.json()["amount"] == 300 and first.json()["provider_id"].startswith("sandbox_re_")
    state = (await client.get(f"{URL}/intents/{intent['id']}", headers=me)).json()
    assert (state["status"], state["amount_refunded"]) == ("partially_refunded", 300)
    too_much = await refund(client, intent, me, amount=701)
    assert too_much.status_code == 409
    assert too_much.json()["refundable"] == 700
    rest = await refund(client, intent, me)  # no amount: all that is left
    assert rest.json()["amount"] == 700
    state = (await client.get(f"{URL}/intents/{intent['id']}", headers=me)).json()
    assert (state["status"], state["amount_refunded"]) == ("refunded", 1000)
    assert (await refund(client, intent, me, amount=1)).status_code == 409
    events = await outbox("payments.refund_succeeded", intent["id"])
    assert [e["data"]["amount"] for e in events] == [300, 700]


async def test_refund_key_replays_and_conflicts(client: httpx.AsyncClient, user: Callable) -> None:
    me, admin = user(), user("admin")
    intent = await paid_intent(client, me, admin, 1000)
    first = await refund(client, intent, me, "r-1", amount=100)
    again = await refund(client, intent, me, "r-1", amount=100)
    other = await refund(client, intent, me, "r-1", amount=200)
    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 409)
    assert first.json()["id"] == again.json()["id"]
    state = (await client.get(f"{URL}/intents/{intent['id']}", headers=me)).json()
    assert state["amount_refunded"] == 100


async def test_racing_refunds_never_pass_the_captured_amount(
    client: httpx.AsyncClient, user: Callable, payments_engine: AsyncEngine
) -> None:
    me, admin = user(), user("admin")
    intent = await paid_intent(client, me, admin, 1000)
    responses = await asyncio.gather(*(refund(client, intent, me, amount=600) for _ in range(6)))
    assert sorted(r.status_code for r in responses) == [201] + [409] * 5
    async with payments_engine.connect() as conn:
        total = await conn.scalar(
            text("SELECT sum(amount) FROM payments.refunds WHERE intent_id = :id"),
            {"id": intent["id"]},
        )
    assert total == 600


async def test_unpaid_intents_are_not_refunded(client: httpx.AsyncClient, user: Callable) -> None:
    me = user()
    intent = await new_intent(client, me)
    response = await refund(client, intent, me, amount=1)
    assert response.status_code == 409
    no_key = await client.post(f"{URL}/intents/{intent['id']}/refunds", json={}, headers=me)
    assert no_key.status_code == 428

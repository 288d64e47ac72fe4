"""The sandbox's succeed/fail endpoints: the events Stripe would send, the same handling."""

from collections.abc import Callable

import httpx
from payments_testkit import new_intent

URL = "/api/v1/payments"


async def test_succeed_moves_records_and_announces(
    client: httpx.AsyncClient, user: Callable, outbox: Callable
) -> None:
    me, admin = user(), user("admin")
    intent = await new_intent(client, me, 4200)
    response = await client.post(f"{URL}/sandbox/intents/{intent['id']}/succeed", headers=admin)
    assert response.status_code == 200, response.text
    paid = response.json()
    assert (paid["status"], paid["amount_received"]) == ("succeeded", 4200)
    assert (await client.get(f"{URL}/intents/{intent['id']}", headers=me)).json()[
        "status"
    ] == "succeeded"
    [event] = await outbox("payments.payment_succeeded", intent["id"])
    assert event["data"]["amount"] == 4200 and event["data"]["currency"] == "USD"
    ledger = (await client.get(f"{URL}/intents/{intent['id']}/events", headers=admin)).json()
    assert [(e["kind"], e["to_status"]) for e in ledger] == [
        ("created", "requires_payment_method"),
        ("status_changed", "succeeded"),
        ("provider_event", "succeeded"),
    ]
    assert ledger[2]["data"]["type"] == "payment_intent.succeeded"
    assert ledger[2]["source"] == "sandbox"


async def test_fail_records_the_decline(
    client: httpx.AsyncClient, user: Callable, outbox: Callable
) -> None:
    me, admin = user(), user("admin")
    intent = await new_intent(client, me)
    response = await client.post(f"{URL}/sandbox/intents/{intent['id']}/fail", headers=admin)
    assert response.json()["status"] == "failed"
    [event] = await outbox("payments.payment_failed", intent["id"])
    assert event["data"]["reason"] == "generic_decline"
    # A declined intent can still be paid (another card), as at Stripe.
    retry = await client.post(f"{URL}/sandbox/intents/{intent['id']}/succeed", headers=admin)
    assert retry.json()["status"] == "succeeded"


async def test_a_paid_intent_cannot_be_paid_again(
    client: httpx.AsyncClient, user: Callable
) -> None:
    admin = user("admin")
    intent = await new_intent(client, user())
    await client.post(f"{URL}/sandbox/intents/{intent['id']}/succeed", headers=admin)
    again = await client.post(f"{URL}/sandbox/intents/{intent['id']}/succeed", headers=admin)
    assert again.status_code == 400
    cancel = await client.post(f"{URL}/intents/{intent['id']}/cancel", headers=admin)
    assert cancel.status_code == 409


async def test_only_admins_complete_and_read_the_ledger(
    client: httpx.AsyncClient, user: Callable
) -> None:
    me = user()
    intent = await new_intent(client, me)
    assert (
        await client.post(f"{URL}/sandbox/intents/{intent['id']}/succeed", headers=me)
    ).status_code == 403
    assert (await client.get(f"{URL}/intents/{intent['id']}/events", headers=me)).status_code == 403

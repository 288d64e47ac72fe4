"""Payment intents through the sandbox provider: idempotency, ownership, validation."""

import asyncio
import uuid
from collections.abc import Callable

import httpx
from payments_testkit import new_intent
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

URL = "/api/v1/payments/intents"


async def test_create_returns_a_sandbox_intent(client: httpx.AsyncClient, user: Callable) -> None:
    intent = await new_intent(client, user(), 2500, description="Tea", metadata={"order": "42"})
    assert intent["status"] == "requires_payment_method"
    assert intent["provider_id"].startswith("sandbox_pi_")
    assert intent["client_secret"].startswith(intent["provider_id"] + "_secret_")
    assert (intent["amount"], intent["currency"]) == (2500, "usd")
    assert intent["livemode"] is False and intent["sandbox"] is True
    assert intent["metadata"] == {"order": "42"}


async def test_idempotency_key_is_required(client: httpx.AsyncClient, user: Callable) -> None:
    response = await client.post(URL, json={"amount": 100, "currency": "usd"}, headers=user())
    assert response.status_code == 428
    assert response.headers["content-type"] == "application/problem+json"
    assert "Idempotency-Key" in response.json()["detail"]


async def test_same_key_same_body_is_the_same_intent(
    client: httpx.AsyncClient, user: Callable
) -> None:
    headers = {**user(), "Idempotency-Key": "order-1"}
    first = await client.post(URL, json={"amount": 700, "currency": "eur"}, headers=headers)
    again = await client.post(URL, json={"currency": "EUR", "amount": 700}, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]


async def test_same_key_other_body_is_a_conflict(client: httpx.AsyncClient, user: Callable) -> None:
    headers = {**user(), "Idempotency-Key": "order-2"}
    first = await client.post(URL, json={"amount": 700, "currency": "eur"}, headers=headers)
    other = await client.post(URL, json={"amount": 701, "currency": "eur"}, headers=headers)
    assert other.status_code == 409
    problem = other.json()
    assert problem["type"].endswith("/idempotency-conflict")
    assert problem["conflicting_intent"] == first.json()["id"]


async def test_the_same_key_is_another_users_own(client: httpx.AsyncClient, user: Callable) -> None:
    body = {"amount": 300, "currency": "usd"}
    a = await client.post(URL, json=body, headers={**user(), "Idempotency-Key": "shared"})
    b = await client.post(URL, json=body, headers={**user(), "Idempotency-Key": "shared"})
    assert (a.status_code, b.status_code) == (201, 201)
    assert a.json()["id"] != b.json()["id"]


async def test_twenty_concurrent_identical_requests_make_one_intent(
    client: httpx.AsyncClient, user: Callable, payments_engine: AsyncEngine
) -> None:
    key = uuid.uuid4().hex
    headers = {**user(), "Idempotency-Key": key}
    responses = await asyncio.gather(
        *(
            client.post(URL, json={"amount": 1234, "currency": "usd"}, headers=headers)
            for _ in range(20)
        )
    )
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 19 + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    provider_id = responses[0].json()["provider_id"]
    async with payments_engine.connect() as conn:
        intents = await conn.scalar(
            text("SELECT count(*) FROM payments.intents WHERE idempotency_key = :k"), {"k": key}
        )
        sandbox = await conn.scalar(
            text(
                "SELECT count(*) FROM payments.sandbox_objects WHERE body->>'amount' = '1234'"
                " AND id = :id"
            ),
            {"id": provider_id},
        )
    assert (intents, sandbox) == (1, 1)


async def test_bad_input_is_refused(client: httpx.AsyncClient, user: Callable) -> None:
    headers = {**user(), "Idempotency-Key": "k"}
    for body in (
        {"amount": 0, "currency": "usd"},
        {"amount": 100_000_000, "currency": "usd"},
        {"amount": 100, "currency": "xyz"},
        {"amount": 100, "currency": "usd", "description": "bell\x07"},
        {"amount": 100, "currency": "usd", "metadata": {"k": "v" * 501}},
        {"amount": 100, "currency": "usd", "surprise": True},
    ):
        response = await client.post(URL, json=body, headers=headers)
        assert response.status_code == 422, body
        assert "Traceback" not in response.text
    bad_key = await client.post(
        URL, json={"amount": 1, "currency": "usd"}, headers={**user(), "Idempotency-Key": "a b"}
    )
    assert bad_key.status_code == 400


async def test_anonymous_callers_are_refused(client: httpx.AsyncClient) -> None:
    response = await client.get(URL)
    assert response.status_code == 401


async def test_another_users_intent_is_not_found(client: httpx.AsyncClient, user: Callable) -> None:
    owner, stranger = user(), user()
    intent = await new_intent(client, owner)
    for method, path in (
        ("GET", f"{URL}/{intent['id']}"),
        ("POST", f"{URL}/{intent['id']}/cancel"),
    ):
        response = await client.request(method, path, headers=stranger)
        assert response.status_code == 404
    refund = await client.post(
        f"{URL}/{intent['id']}/refunds", json={}, headers={**stranger, "Idempotency-Key": "r"}
    )
    assert refund.status_code == 404
    assert (await client.get(f"{URL}/{intent['id']}", headers=owner)).status_code == 200
    admin = await client.get(f"{URL}/{intent['id']}", headers=user("admin"))
    assert admin.status_code == 200


async def test_list_is_own_newest_first_by_cursor(
    client: httpx.AsyncClient, user: Callable
) -> None:
    me = user()
    made = [await new_intent(client, me, amount) for amount in (101, 102, 103)]
    await new_intent(client, user())  # someone else's
    first = (await client.get(URL, params={"limit": 2}, headers=me)).json()
    assert [i["amount"] for i in first["items"]] == [103, 102]
    rest = (
        await client.get(URL, params={"limit": 2, "cursor": first["next_cursor"]}, headers=me)
    ).json()
    assert [i["amount"] for i in rest["items"]] == [101]
    assert rest["next_cursor"] is None
    await client.post(f"{URL}/{made[0]['id']}/cancel", headers=me)
    canceled = (await client.get(URL, params={"status": "canceled"}, headers=me)).json()
    assert [i["id"] for i in canceled["items"]] == [made[0]["id"]]


async def test_cancel_moves_and_announces(
    client: httpx.AsyncClient, user: Callable, outbox: Callable
) -> None:
    me = user()
    intent = await new_intent(client, me)
    response = await client.post(f"{URL}/{intent['id']}/cancel", headers=me)
    assert response.status_code == 200
    assert response.json()["status"] == "canceled"
    again = await client.post(f"{URL}/{intent['id']}/cancel", headers=me)
    assert again.json()["status"] == "canceled"
    events = await outbox("payments.payment_canceled", intent["id"])
    assert len(events) == 1


async def test_customer_is_created_once(client: httpx.AsyncClient, user: Callable) -> None:
    me = user()
    url = "/api/v1/payments/customers"
    first = await client.post(url, json={"email": "ada@example.com"}, headers=me)
    again = await client.post(url, headers=me)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert first.json()["provider_id"].startswith("sandbox_cus_")

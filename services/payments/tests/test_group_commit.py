"""Group commit: concurrent webhook events share a transaction, each is applied once, and a
bad one fails alone."""

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from payments_testkit import SANDBOX_SECRET, new_intent, sign, stripe_event
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from keelson.payment import ProviderEvent
from payments_service.plugin import GROUP_COMMIT, PAYMENT_PROVIDER
from payments_service.webhooks import Outcome

HOOK = "/api/v1/payments/webhooks/stripe"


def succeeded(intent: dict[str, Any]) -> bytes:
    obj = {
        "id": intent["provider_id"],
        "object": "payment_intent",
        "status": "succeeded",
        "amount": intent["amount"],
        "amount_received": intent["amount"],
        "currency": intent["currency"],
    }
    return stripe_event("payment_intent.succeeded", obj)


def verified(app: FastAPI, payload: bytes) -> ProviderEvent:
    provider = app.state.container.resolve(PAYMENT_PROVIDER)
    event: ProviderEvent = provider.verify_webhook(payload, sign(payload, SANDBOX_SECRET))
    return event


def batches() -> tuple[float, float]:
    """How many batches were committed, and how many events they held, so far."""
    count = REGISTRY.get_sample_value("payments_webhook_batch_events_count") or 0.0
    total = REGISTRY.get_sample_value("payments_webhook_batch_events_sum") or 0.0
    return count, total


async def ledger_rows(engine: AsyncEngine, event_id: str) -> int:
    async with engine.connect() as conn:
        found = await conn.scalar(
            text("SELECT count(*) FROM payments.ledger WHERE provider_event_id = :id"),
            {"id": event_id},
        )
    return int(found or 0)


async def statuses(client: httpx.AsyncClient, headers: dict[str, str], *intents: dict) -> list:
    found = []
    for intent in intents:
        response = await client.get(f"/api/v1/payments/intents/{intent['id']}", headers=headers)
        found.append(response.json()["status"])
    return found


async def test_events_submitted_together_share_one_batch_and_copies_are_duplicates(
    payments_app: FastAPI,
    client: httpx.AsyncClient,
    user: Callable,
    payments_engine: AsyncEngine,
    outbox: Callable,
) -> None:
    me = user()
    first, second, third = [await new_intent(client, me) for _ in range(3)]
    events = [verified(payments_app, succeeded(i)) for i in (first, second, third)]
    group_commit = payments_app.state.container.resolve(GROUP_COMMIT)
    before = batches()
    # Submitted in one turn of the loop: the batch that starts next holds all of them.
    outcomes = await asyncio.gather(
        *(
            group_commit.apply(event, source="webhook")
            for event in (events[0], events[1], events[0], events[2], events[1])
        )
    )
    assert outcomes == [
        Outcome.APPLIED,
        Outcome.APPLIED,
        Outcome.DUPLICATE,
        Outcome.APPLIED,
        Outcome.DUPLICATE,
    ]
    count, total = batches()
    assert (count - before[0], total - before[1]) == (1, 5)
    assert await statuses(client, me, first, second, third) == ["succeeded"] * 3
    for event, intent in zip(events, (first, second, third), strict=True):
        assert await ledger_rows(payments_engine, event.id) == 2  # status change + event
        assert len(await outbox("payments.payment_succeeded", intent["id"])) == 1


async def test_a_failing_event_fails_alone_and_stays_unprocessed(
    payments_app: FastAPI,
    client: httpx.AsyncClient,
    user: Callable,
    payments_engine: AsyncEngine,
) -> None:
    me = user()
    good, disputed, other = [await new_intent(client, me) for _ in range(3)]
    # PostgreSQL refuses a NUL in jsonb: the batch's one write statement fails for all.
    bad = verified(
        payments_app,
        stripe_event(
            "charge.dispute.created",
            {
                "id": "dp_nul",
                "object": "dispute",
                "payment_intent": disputed["provider_id"],
                "amount": 100,
                "currency": "usd",
                "reason": "fraudulent\u0000",
            },
        ),
    )
    events = [
        verified(payments_app, succeeded(good)),
        bad,
        verified(payments_app, succeeded(other)),
    ]
    group_commit = payments_app.state.container.resolve(GROUP_COMMIT)
    outcomes = await asyncio.gather(
        *(group_commit.apply(event, source="webhook") for event in events),
        return_exceptions=True,
    )
    assert outcomes[0] == Outcome.APPLIED and outcomes[2] == Outcome.APPLIED
    assert isinstance(outcomes[1], DBAPIError)
    assert await statuses(client, me, good, disputed, other) == [
        "succeeded",
        "requires_payment_method",
        "succeeded",
    ]
    # Not marked processed: the provider's redelivery is tried again, not taken as a copy.
    assert await ledger_rows(payments_engine, bad.id) == 0
    async with payments_engine.connect() as conn:
        marked = await conn.scalar(
            text("SELECT count(*) FROM payments.processed_events WHERE event_id = :id"),
            {"id": bad.id},
        )
    assert marked == 0


async def test_concurrent_deliveries_over_http_apply_each_event_once(
    client: httpx.AsyncClient, user: Callable, payments_engine: AsyncEngine, outbox: Callable
) -> None:
    me = user()
    intents = [await new_intent(client, me) for _ in range(6)]
    payloads = [succeeded(intent) for intent in intents]
    deliveries = [*payloads, *payloads[:3], *payloads[:2]]  # some twice, some three times

    async def post(payload: bytes) -> httpx.Response:
        headers = {"Stripe-Signature": sign(payload, SANDBOX_SECRET)}
        return await client.post(HOOK, content=payload, headers=headers)

    responses = await asyncio.gather(*(post(p) for p in deliveries))
    assert [r.status_code for r in responses] == [200] * len(deliveries)
    outcomes = [r.json()["outcome"] for r in responses]
    assert outcomes.count("applied") == len(intents)
    assert outcomes.count("duplicate") == len(deliveries) - len(intents)
    assert await statuses(client, me, *intents) == ["succeeded"] * len(intents)
    for intent in intents:
        assert len(await outbox("payments.payment_succeeded", intent["id"])) == 1


@pytest.mark.parametrize("size", [1, 3])
async def test_a_batch_writes_each_intents_rows_in_the_order_of_its_events(
    payments_app: FastAPI, client: httpx.AsyncClient, user: Callable, size: int
) -> None:
    """Two events for one intent in one batch: the second sees the state the first made."""
    me = user()
    intents = [await new_intent(client, me) for _ in range(size)]
    processing = [
        verified(
            payments_app,
            stripe_event(
                "payment_intent.processing",
                {"id": i["provider_id"], "object": "payment_intent", "status": "processing"},
            ),
        )
        for i in intents
    ]
    done = [verified(payments_app, succeeded(i)) for i in intents]
    group_commit = payments_app.state.container.resolve(GROUP_COMMIT)
    outcomes = await asyncio.gather(
        *(group_commit.apply(e, source="webhook") for e in [*processing, *done])
    )
    assert outcomes == [Outcome.APPLIED] * (2 * size)
    admin = user("admin")
    for intent in intents:
        response = await client.get(
            f"/api/v1/payments/intents/{intent['id']}/events", headers=admin
        )
        moves = [
            (row["from_status"], row["to_status"])
            for row in response.json()
            if row["kind"] == "status_changed"
        ]
        assert moves == [
            ("requires_payment_method", "processing"),
            ("processing", "succeeded"),
        ]


async def test_a_request_gone_before_its_batch_starts_is_left_out(
    payments_app: FastAPI, client: httpx.AsyncClient, user: Callable, payments_engine: AsyncEngine
) -> None:
    me = user()
    kept, dropped = [await new_intent(client, me) for _ in range(2)]
    events = [verified(payments_app, succeeded(i)) for i in (kept, dropped)]
    group_commit = payments_app.state.container.resolve(GROUP_COMMIT)
    first = asyncio.create_task(group_commit.apply(events[0], source="webhook"))
    second = asyncio.create_task(group_commit.apply(events[1], source="webhook"))
    await asyncio.sleep(0)  # one turn: both wait in the queue, the batch not yet started
    second.cancel()  # as when the client disconnects
    assert await first == Outcome.APPLIED
    with pytest.raises(asyncio.CancelledError):
        await second
    assert await statuses(client, me, kept, dropped) == ["succeeded", "requires_payment_method"]
    assert await ledger_rows(payments_engine, events[1].id) == 0

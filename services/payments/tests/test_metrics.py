"""The payments metrics are exposed on /metrics and count what happened."""

from collections.abc import Callable

import httpx
from fastapi import FastAPI
from payments_testkit import new_intent
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from payments_service.plugin import INTENT_COUNTER


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_intents_by_status_is_a_gauge_of_the_current_counts(
    client: httpx.AsyncClient, user: Callable, payments_app: FastAPI, payments_engine: AsyncEngine
) -> None:
    counter = payments_app.state.container.resolve(INTENT_COUNTER)

    async def in_database(status: str) -> int:
        async with payments_engine.connect() as conn:
            n = await conn.scalar(
                text("SELECT count(*) FROM payments.intents WHERE status = :s"), {"s": status}
            )
        return int(n or 0)

    await counter.count_once()
    open_before = sample("payments_intents", status="requires_payment_method")
    succeeded_before = sample("payments_intents", status="succeeded")
    intent = await new_intent(client, user())
    await counter.count_once()
    assert sample("payments_intents", status="requires_payment_method") == open_before + 1
    await client.post(
        f"/api/v1/payments/sandbox/intents/{intent['id']}/succeed", headers=user("admin")
    )
    await counter.count_once()
    # The intent left `requires_payment_method`: the gauge went down again, unlike a counter.
    assert sample("payments_intents", status="requires_payment_method") == open_before
    assert sample("payments_intents", status="succeeded") == succeeded_before + 1
    for status in ("requires_payment_method", "succeeded", "refunded"):
        assert sample("payments_intents", status=status) == await in_database(status)


async def test_webhooks_and_provider_calls_are_counted(
    client: httpx.AsyncClient, user: Callable
) -> None:
    applied = sample(
        "payments_webhook_events_total", type="payment_intent.succeeded", outcome="applied"
    )
    calls = sample(
        "payment_provider_call_seconds_count", provider="sandbox", operation="create_intent"
    )
    intent = await new_intent(client, user())
    await client.post(
        f"/api/v1/payments/sandbox/intents/{intent['id']}/succeed", headers=user("admin")
    )
    assert (
        sample("payments_webhook_events_total", type="payment_intent.succeeded", outcome="applied")
        == applied + 1
    )
    assert (
        sample("payment_provider_call_seconds_count", provider="sandbox", operation="create_intent")
        == calls + 1
    )
    exposed = (await client.get("/metrics")).text
    for name in (
        "payments_intents",
        "payments_webhook_lag_seconds",
        "payment_provider_call_seconds",
        "payments_webhook_events_total",
    ):
        assert name in exposed

"""The payments metrics are exposed on /metrics and count what happened."""

from collections.abc import Callable

import httpx
from payments_testkit import new_intent
from prometheus_client import REGISTRY


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_intents_webhooks_and_provider_calls_are_counted(
    client: httpx.AsyncClient, user: Callable
) -> None:
    succeeded = sample("payments_intents_total", status="succeeded")
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
    assert sample("payments_intents_total", status="succeeded") == succeeded + 1
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
        "payments_intents_total",
        "payments_webhook_lag_seconds",
        "payment_provider_call_seconds",
        "payments_webhook_events_total",
    ):
        assert name in exposed

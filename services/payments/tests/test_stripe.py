"""StripeProvider and the service in Stripe mode: the real SDK against localstripe.

Faults localstripe cannot make (500s, timeouts, idempotent replays) come from the proxy
in front of it.
"""

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import stripe
from payments_testkit import caller
from prometheus_client import REGISTRY
from stripe_peers import API_KEY, FaultProxy, LocalStripe

from keelson.errors import (
    IdempotencyConflict,
    PaymentDeclined,
    PaymentInvalid,
    PaymentProviderUnavailable,
)
from keelson.payment import PaymentSettings, StripeProvider, create_provider, provider_error
from keelson_dev.testing import LiveServer, eventually

GOOD_CARD = "4242424242424242"
DECLINED_CARD = "4000000000000341"  # localstripe declines it when charged


@pytest.fixture
async def provider(
    proxy: FaultProxy, stripe_payment_settings: PaymentSettings
) -> AsyncIterator[StripeProvider]:
    made = create_provider(stripe_payment_settings, engine=None)
    assert isinstance(made, StripeProvider)
    yield made
    await made.aclose()


@pytest.fixture
async def browser(localstripe: LocalStripe) -> AsyncIterator[stripe.StripeClient]:
    """The SDK as the customer's side uses it: adds a card and confirms."""
    http = stripe.HTTPXClient(allow_sync_methods=False)
    yield stripe.StripeClient(API_KEY, base_addresses={"api": localstripe.url}, http_client=http)
    await http.close_async()


async def pay(browser: stripe.StripeClient, intent_id: str, card: str = GOOD_CARD) -> None:
    method = await browser.v1.payment_methods.create_async(
        params={
            "type": "card",
            "card": {"number": card, "exp_month": 12, "exp_year": 2034, "cvc": "123"},
        }
    )
    await browser.v1.payment_intents.update_async(intent_id, params={"payment_method": method.id})
    try:
        await browser.v1.payment_intents.confirm_async(intent_id)
    except stripe.CardError:
        if card == GOOD_CARD:
            raise


async def make_intent(provider: StripeProvider, amount: int = 1500, key: str | None = None):
    return await provider.create_intent(
        amount=amount,
        currency="usd",
        customer=None,
        description=None,
        metadata={"order": "7"},
        idempotency_key=key or uuid.uuid4().hex,
    )


async def test_customer_intent_cancel_and_list(provider: StripeProvider) -> None:
    customer = await provider.create_customer(
        email="ada@example.com",
        metadata={"keelson_user_id": "u1"},
        idempotency_key="c-" + uuid.uuid4().hex,
    )
    assert customer.id.startswith("cus_") and customer.email == "ada@example.com"
    intent = await provider.create_intent(
        amount=2000,
        currency="EUR",
        customer=customer.id,
        description=None,
        metadata={"a": "b"},
        idempotency_key=uuid.uuid4().hex,
    )
    assert intent.id.startswith("pi_") and intent.status == "requires_payment_method"
    assert (intent.amount, intent.currency, intent.livemode) == (2000, "eur", False)
    assert intent.client_secret and intent.customer == customer.id
    assert (await provider.retrieve_intent(intent.id)).id == intent.id
    listed = await provider.list_intents(since=intent.created, limit=1000)
    assert intent.id in {i.id for i in listed}
    canceled = await provider.cancel_intent(intent.id, idempotency_key=uuid.uuid4().hex)
    assert canceled.status == "canceled"


async def test_refund_after_payment(provider: StripeProvider, browser: stripe.StripeClient) -> None:
    intent = await make_intent(provider, 1500)
    await pay(browser, intent.id)
    assert (await provider.retrieve_intent(intent.id)).status == "succeeded"
    refund = await provider.create_refund(
        intent_id=intent.id, amount=500, reason=None, metadata={}, idempotency_key=uuid.uuid4().hex
    )
    assert refund.id.startswith("re_") and (refund.amount, refund.status) == (500, "succeeded")


async def test_a_500_is_retried_with_the_same_key(
    provider: StripeProvider, proxy: FaultProxy
) -> None:
    proxy.fail.append(500)
    intent = await make_intent(provider)
    assert intent.id.startswith("pi_")
    assert (proxy.received, proxy.forwarded) == (2, 1)


async def test_a_lost_answer_is_retried_without_a_second_intent(
    provider: StripeProvider, proxy: FaultProxy, localstripe: LocalStripe
) -> None:
    before = len(
        httpx.get(
            f"{localstripe.url}/v1/payment_intents", params={"limit": 100}, auth=(API_KEY, "")
        ).json()["data"]
    )
    assert before < 99  # the count below is of one page
    proxy.lose = 1  # Stripe made the intent, but the answer never arrived
    intent = await make_intent(provider)
    assert intent.id.startswith("pi_")
    assert (proxy.received, proxy.forwarded) == (2, 1)
    after = httpx.get(
        f"{localstripe.url}/v1/payment_intents", params={"limit": 100}, auth=(API_KEY, "")
    ).json()["data"]
    assert len(after) == before + 1


async def test_a_replayed_key_gets_the_first_answer(
    provider: StripeProvider, proxy: FaultProxy
) -> None:
    key = uuid.uuid4().hex
    first = await make_intent(provider, 1500, key)
    again = await make_intent(provider, 1500, key)
    assert first.id == again.id
    assert (proxy.received, proxy.forwarded) == (2, 1)
    with pytest.raises(IdempotencyConflict):
        await make_intent(provider, 1600, key)


async def test_provider_down_and_timeouts_are_unavailable(
    provider: StripeProvider, proxy: FaultProxy
) -> None:
    labels = {
        "provider": "stripe",
        "operation": "create_intent",
        "kind": "payment-provider-unavailable",
    }
    errors = REGISTRY.get_sample_value("payment_provider_errors_total", labels) or 0.0
    proxy.fail.extend([503, 503, 503])
    with pytest.raises(PaymentProviderUnavailable) as down:
        await make_intent(provider)
    assert down.value.status == 503 and "Retry-After" in down.value.headers
    proxy.hang = 3  # the first try and both retries
    with pytest.raises(PaymentProviderUnavailable):
        await make_intent(provider)
    assert proxy.received == 6
    assert REGISTRY.get_sample_value("payment_provider_errors_total", labels) == errors + 2


async def test_invalid_requests_and_declines_map_to_keelson_errors(
    provider: StripeProvider, browser: stripe.StripeClient
) -> None:
    with pytest.raises(PaymentInvalid) as invalid:
        await provider.retrieve_intent("pi_does_not_exist")
    assert invalid.value.status == 400
    intent = await make_intent(provider)
    method = await browser.v1.payment_methods.create_async(
        params={
            "type": "card",
            "card": {"number": DECLINED_CARD, "exp_month": 12, "exp_year": 2034, "cvc": "123"},
        }
    )
    await browser.v1.payment_intents.update_async(intent.id, params={"payment_method": method.id})
    with pytest.raises(stripe.CardError) as card_error:
        await browser.v1.payment_intents.confirm_async(intent.id)
    declined = provider_error(card_error.value)
    assert isinstance(declined, PaymentDeclined) and declined.status == 402
    assert declined.problem()["decline_code"]
    assert API_KEY not in str(declined.problem())


# The service in Stripe mode, with localstripe delivering signed webhooks to it.


@pytest.fixture
async def api(stripe_service: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stripe_service.url, timeout=30) as client:
        yield client


def who(stripe_service: LiveServer, *roles: str) -> dict[str, str]:
    settings = stripe_service.server.config.app.state.settings
    return caller(settings, None, *(roles or ("user",)))


async def intent_state(api: httpx.AsyncClient, intent: dict, headers: dict) -> dict[str, Any]:
    response = await api.get(f"/api/v1/payments/intents/{intent['id']}", headers=headers)
    body: dict[str, Any] = response.json()
    return body


async def test_paid_through_stripe_and_told_by_webhook(
    api: httpx.AsyncClient,
    stripe_service: LiveServer,
    browser: stripe.StripeClient,
    proxy: FaultProxy,
) -> None:
    me, admin = who(stripe_service), who(stripe_service, "admin")
    created = await api.post(
        "/api/v1/payments/intents",
        json={"amount": 3100, "currency": "usd", "metadata": {"order": "9"}},
        headers={**me, "Idempotency-Key": uuid.uuid4().hex},
    )
    assert created.status_code == 201, created.text
    intent = created.json()
    assert intent["provider_id"].startswith("pi_") and intent["sandbox"] is False
    await pay(browser, intent["provider_id"])

    async def succeeded() -> bool:
        return (await intent_state(api, intent, me))["status"] == "succeeded"

    await eventually(succeeded, timeout=30)
    ledger = (
        await api.get(f"/api/v1/payments/intents/{intent['id']}/events", headers=admin)
    ).json()
    assert [(e["kind"], e["source"]) for e in ledger][-1] == ("provider_event", "webhook")
    refund = await api.post(
        f"/api/v1/payments/intents/{intent['id']}/refunds",
        json={"amount": 1000},
        headers={**me, "Idempotency-Key": uuid.uuid4().hex},
    )
    assert refund.status_code == 201, refund.text
    assert refund.json()["provider_id"].startswith("re_")
    assert (await intent_state(api, intent, me))["status"] == "partially_refunded"


async def test_a_declined_card_fails_the_intent(
    api: httpx.AsyncClient, stripe_service: LiveServer, browser: stripe.StripeClient
) -> None:
    me = who(stripe_service)
    intent = (
        await api.post(
            "/api/v1/payments/intents",
            json={"amount": 800, "currency": "usd"},
            headers={**me, "Idempotency-Key": uuid.uuid4().hex},
        )
    ).json()
    await pay(browser, intent["provider_id"], DECLINED_CARD)

    async def failed() -> bool:
        return (await intent_state(api, intent, me))["status"] == "failed"

    await eventually(failed, timeout=30)


async def test_stripe_down_is_a_503_problem(
    api: httpx.AsyncClient, stripe_service: LiveServer, proxy: FaultProxy
) -> None:
    proxy.fail.extend([500, 500, 500])
    response = await api.post(
        "/api/v1/payments/intents",
        json={"amount": 800, "currency": "usd"},
        headers={**who(stripe_service), "Idempotency-Key": uuid.uuid4().hex},
    )
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert int(response.headers["retry-after"]) > 0
    assert API_KEY not in response.text


async def test_sandbox_routes_are_absent_with_stripe(
    api: httpx.AsyncClient, stripe_service: LiveServer
) -> None:
    response = await api.post(
        f"/api/v1/payments/sandbox/intents/{uuid.uuid4()}/succeed",
        headers=who(stripe_service, "admin"),
    )
    assert response.status_code == 404

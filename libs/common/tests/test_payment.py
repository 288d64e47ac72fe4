"""keelson.payment: the sandbox provider on a real PostgreSQL, webhook parsing, the errors."""

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from alembic.migration import MigrationContext
from alembic.operations import Operations
from fastapi import APIRouter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from keelson.config import KeelsonSettings, LogSettings
from keelson.db import create_engine
from keelson.errors import (
    BadRequest,
    IdempotencyConflict,
    NotFound,
    PaymentDeclined,
    PaymentInvalid,
    PaymentProviderUnavailable,
)
from keelson.http import create_app
from keelson.payment import (
    PaymentSettings,
    SandboxProvider,
    StripeProvider,
    create_provider,
    create_sandbox_tables,
    parse_stripe_event,
)
from keelson.plugins import PluginContainer

SECRET = "whsec_library_test"


@pytest.fixture(scope="module")
async def engine(test_database_url: str) -> AsyncIterator[AsyncEngine]:
    schema = f"pay_{uuid.uuid4().hex[:8]}"
    made = create_engine(KeelsonSettings(database_url=test_database_url), schema=schema)

    def create(connection: object) -> None:
        with Operations.context(MigrationContext.configure(connection)):
            create_sandbox_tables(schema)

    async with made.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        await conn.run_sync(create)
    yield made
    await made.dispose()


@pytest.fixture
def sandbox(engine: AsyncEngine) -> SandboxProvider:
    return SandboxProvider(engine, webhook_secret=SECRET)


async def intent(sandbox: SandboxProvider, amount: int = 1000, key: str | None = None):
    return await sandbox.create_intent(
        amount=amount,
        currency="EUR",
        customer=None,
        description="tea",
        metadata={"order": "1"},
        idempotency_key=key or uuid.uuid4().hex,
    )


async def test_sandbox_objects_are_marked_test_mode(sandbox: SandboxProvider) -> None:
    created = await intent(sandbox)
    assert created.id.startswith("sandbox_pi_") and created.livemode is False
    assert (created.currency, created.status) == ("eur", "requires_payment_method")
    customer = await sandbox.create_customer(email=None, metadata={}, idempotency_key="c")
    assert customer.id.startswith("sandbox_cus_")
    event = await sandbox.complete_intent(created.id, succeed=True)
    assert event.object["sandbox"] is True and event.object["livemode"] is False
    assert event.type == "payment_intent.succeeded" and event.id.startswith("sandbox_evt_")


async def test_sandbox_keys_are_idempotent_also_at_once(sandbox: SandboxProvider) -> None:
    key = uuid.uuid4().hex
    made = await asyncio.gather(*(intent(sandbox, 500, key) for _ in range(10)))
    assert len({m.id for m in made}) == 1
    with pytest.raises(IdempotencyConflict):
        await intent(sandbox, 501, key)


async def test_sandbox_refunds_never_pass_what_was_received(sandbox: SandboxProvider) -> None:
    created = await intent(sandbox, 1000)
    with pytest.raises(PaymentInvalid):  # not paid yet
        await sandbox.create_refund(
            intent_id=created.id, amount=1, reason=None, metadata={}, idempotency_key="r0"
        )
    await sandbox.complete_intent(created.id, succeed=True)

    async def refund(key: str, amount: int) -> object:
        return await sandbox.create_refund(
            intent_id=created.id, amount=amount, reason=None, metadata={}, idempotency_key=key
        )

    results = await asyncio.gather(
        *(refund(uuid.uuid4().hex, 400) for _ in range(4)), return_exceptions=True
    )
    assert sum(not isinstance(r, Exception) for r in results) == 2
    assert all(isinstance(r, PaymentInvalid) for r in results if isinstance(r, Exception))


async def test_sandbox_cancel_fail_and_list(sandbox: SandboxProvider) -> None:
    since = int(time.time())
    first, second = await intent(sandbox), await intent(sandbox)
    declined = await sandbox.complete_intent(first.id, succeed=False, decline_code="stolen_card")
    assert declined.type == "payment_intent.payment_failed"
    assert declined.object["last_payment_error"]["decline_code"] == "stolen_card"
    canceled = await sandbox.cancel_intent(second.id, idempotency_key="x")
    assert canceled.status == "canceled"
    with pytest.raises(PaymentInvalid):
        await sandbox.complete_intent(second.id, succeed=True)
    listed = {i.id for i in await sandbox.list_intents(since=since, limit=100)}
    assert {first.id, second.id} <= listed
    with pytest.raises(NotFound):
        await sandbox.retrieve_intent("sandbox_pi_missing")


def signature(payload: bytes, secret: str, at: int) -> str:
    mac = hmac.new(secret.encode(), f"{at}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={at},v1={mac}"


def test_webhook_parsing_checks_signature_and_age() -> None:
    payload = json.dumps(
        {
            "id": "evt_1",
            "type": "payment_intent.succeeded",
            "created": 5,
            "livemode": False,
            "data": {"object": {"id": "pi_1", "status": "succeeded"}},
        }
    ).encode()
    now = int(time.time())
    event = parse_stripe_event(payload, signature(payload, SECRET, now), SECRET, tolerance=300)
    assert (event.id, event.type, event.created) == ("evt_1", "payment_intent.succeeded", 5)
    assert event.object["id"] == "pi_1"
    for bad in (
        signature(payload, "whsec_other", now),
        signature(payload, SECRET, now - 301),
        None,
        "x" * 5000,
    ):
        with pytest.raises(BadRequest) as refused:
            parse_stripe_event(payload, bad, SECRET, tolerance=300)
        assert SECRET not in refused.value.detail


def test_the_provider_is_chosen_by_the_key(engine: AsyncEngine) -> None:
    assert isinstance(create_provider(PaymentSettings(), engine=engine), SandboxProvider)
    stripe = create_provider(
        PaymentSettings(stripe_api_key="sk_test_x", stripe_webhook_secret="whsec_x"), engine=None
    )
    assert isinstance(stripe, StripeProvider) and not stripe.sandbox
    assert "sk_test_x" not in repr(PaymentSettings(stripe_api_key="sk_test_x"))
    with pytest.raises(ValueError):
        create_provider(PaymentSettings(), engine=None)
    # Unless set, the sandbox's webhook secret is a process's own: nobody can forge one.
    assert (
        PaymentSettings().sandbox_webhook_secret.get_secret_value()
        != PaymentSettings().sandbox_webhook_secret.get_secret_value()
    )


async def test_payment_errors_render_as_problems() -> None:
    router = APIRouter()

    @router.get("/declined")
    async def declined() -> None:
        raise PaymentDeclined("the card was declined", decline_code="insufficient_funds")

    @router.get("/down")
    async def down() -> None:
        raise PaymentProviderUnavailable("the payment provider is unavailable", retry_after=10)

    @router.get("/reused")
    async def reused() -> None:
        raise IdempotencyConflict("used with another body")

    settings = KeelsonSettings(service="demo", log=LogSettings(ship_endpoint=None))
    app = create_app(settings, container=PluginContainer(settings), routers=[router])
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            card = await client.get("/declined")
            assert card.status_code == 402
            assert card.json()["decline_code"] == "insufficient_funds"
            assert card.json()["type"].endswith("/payment-declined")
            down_ = await client.get("/down")
            assert (down_.status_code, down_.headers["retry-after"]) == (503, "10")
            assert (await client.get("/reused")).status_code == 409

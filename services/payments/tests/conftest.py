"""Fixtures for the payments service: its migrated schema, a running app, signed callers."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

sys.path.insert(0, str(Path(__file__).parent))

from payments_testkit import SANDBOX_SECRET, caller
from pydantic import SecretStr
from stripe_peers import API_KEY, FaultProxy, LocalStripe, local_stripe

from keelson.payment import PaymentSettings
from keelson_dev.testing import (
    LiveServer,
    asgi_client,
    make_settings,
    migrated,
    offline_auth_plugin,
    schema_engine,
)
from payments_service.app import create_app
from payments_service.settings import PaymentsSettings, Settings


@pytest.fixture(scope="session")
def payments_database_url(test_database_url: str) -> str:
    return migrated(test_database_url, "payments_service")


@pytest.fixture(scope="session")
def payments_settings_factory(
    payments_database_url: str, redis_url: str
) -> Callable[..., Settings]:
    def factory(**values: Any) -> Settings:
        # Reconciliation is driven by the tests themselves (reconcile_once).
        values.setdefault("payments", PaymentsSettings(reconcile_interval_seconds=3600))
        values.setdefault("payment", PaymentSettings(sandbox_webhook_secret=SANDBOX_SECRET))
        return make_settings(
            Settings,
            database_url=payments_database_url,
            redis_url=redis_url,
            plugins=offline_auth_plugin(),
            **values,
        )

    return factory


BASE_URL = "http://payments.test"


@pytest.fixture(scope="session")
async def payments_app(
    payments_settings_factory: Callable[..., Settings],
) -> AsyncIterator[FastAPI]:
    app = create_app(payments_settings_factory())
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def client(payments_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(payments_app, base_url=BASE_URL) as c:
        yield c


@pytest.fixture(scope="session")
async def payments_engine(payments_database_url: str) -> AsyncIterator[AsyncEngine]:
    async with schema_engine(Settings, payments_database_url, schema="payments") as engine:
        yield engine


@pytest.fixture
def user(payments_app: FastAPI) -> Callable[..., dict[str, str]]:
    """`user()` → headers of a new user; `user("admin")` → of a new admin."""

    def make(*roles: str, user_id: str | None = None) -> dict[str, str]:
        return caller(payments_app.state.settings, user_id, *(roles or ("user",)))

    return make


@pytest.fixture
def outbox(payments_engine: AsyncEngine) -> Callable[..., Any]:
    """Envelopes in the payments outbox for `topic` about one payment, oldest first."""

    async def read(topic: str, payment_id: str) -> list[dict[str, Any]]:
        async with payments_engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT payload FROM payments.outbox WHERE topic = :topic"
                    " AND payload->'data'->>'payment_id' = :id ORDER BY id"
                ),
                {"topic": topic, "id": payment_id},
            )
            return [row.payload for row in rows]

    return read


WEBHOOK_SECRET = "whsec_keelson_localstripe_test"


@pytest.fixture(scope="session")
def localstripe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStripe]:
    with local_stripe(tmp_path_factory.mktemp("localstripe")) as server:
        yield server


@pytest.fixture(scope="session")
async def fault_proxy(localstripe: LocalStripe) -> AsyncIterator[FaultProxy]:
    proxy = FaultProxy(localstripe.url)
    await proxy.start()
    yield proxy
    await proxy.stop()


@pytest.fixture
def proxy(fault_proxy: FaultProxy) -> FaultProxy:
    """The session's fault proxy, with no fault pending and its counters at zero."""
    fault_proxy.fail.clear()
    fault_proxy.hang = fault_proxy.lose = 0
    fault_proxy.received = fault_proxy.forwarded = 0
    return fault_proxy


@pytest.fixture(scope="session")
def stripe_payment_settings(fault_proxy: FaultProxy) -> PaymentSettings:
    return PaymentSettings(
        stripe_api_key=SecretStr(API_KEY),
        stripe_webhook_secret=SecretStr(WEBHOOK_SECRET),
        stripe_api_base=fault_proxy.url,
        timeout_seconds=1.0,
        max_network_retries=2,
    )


@pytest.fixture(scope="session")
def stripe_service(
    payments_settings_factory: Callable[..., Settings],
    stripe_payment_settings: PaymentSettings,
    localstripe: LocalStripe,
) -> Iterator[LiveServer]:
    """The service in Stripe mode on a real port, where localstripe delivers its webhooks."""
    settings = payments_settings_factory(payment=stripe_payment_settings)
    with LiveServer(create_app(settings)) as server:
        localstripe.register_webhook(
            f"{server.url}/api/v1/payments/webhooks/stripe", WEBHOOK_SECRET
        )
        yield server

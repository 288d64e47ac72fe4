"""Fixtures for the payments service: its migrated schema, a running app, signed callers."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

sys.path.insert(0, str(Path(__file__).parent))

from payments_testkit import caller

import payments_service
from keelson.db import create_engine, migrate
from keelson.embedded import free_port
from keelson.testing import make_settings
from payments_service.app import create_app
from payments_service.settings import PaymentsSettings, Settings


@pytest.fixture(scope="session")
def payments_database_url(test_database_url: str) -> str:
    migrate(Path(payments_service.__file__).parent / "migrations", test_database_url)
    return test_database_url


@pytest.fixture(scope="session")
def payments_settings_factory(
    payments_database_url: str, redis_url: str
) -> Callable[..., Settings]:
    def factory(**values: Any) -> Settings:
        # Reconciliation is driven by the tests themselves (reconcile_once).
        values.setdefault("payments", PaymentsSettings(reconcile_interval_seconds=3600))
        settings = make_settings(
            Settings,
            database_url=payments_database_url,
            redis_url=redis_url,
            plugins={"auth": {"jwks_url": f"http://127.0.0.1:{free_port()}/jwks.json"}},
            **values,
        )
        assert isinstance(settings, Settings)
        return settings

    return factory


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://payments.test") as c:
            yield c


@pytest.fixture(scope="session")
async def payments_app(
    payments_settings_factory: Callable[..., Settings],
) -> AsyncIterator[FastAPI]:
    app = create_app(payments_settings_factory())
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def client(payments_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=payments_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://payments.test") as c:
        yield c


@pytest.fixture(scope="session")
async def payments_engine(payments_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(
        make_settings(Settings, database_url=payments_database_url), schema="payments"
    )
    yield engine
    await engine.dispose()


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

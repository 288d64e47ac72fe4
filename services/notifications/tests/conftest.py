"""Fixtures for the notifications service: its schema, a real SMTP sink, apps and callers."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fastapi import FastAPI
from notifications_testkit import SmtpSink, caller, new_email, user_of
from sqlalchemy.ext.asyncio import AsyncEngine

from keelson_dev.testing import (
    asgi_client,
    make_settings,
    migrated,
    offline_auth_plugin,
    running_app,
    schema_engine,
)
from notifications_service.app import create_app
from notifications_service.settings import (
    DeliverySettings,
    EmailSettings,
    NotificationsSettings,
    Settings,
    WebhookSettings,
)


@pytest.fixture(scope="session")
def notifications_database_url(test_database_url: str) -> str:
    return migrated(test_database_url, "notifications_service")


@pytest.fixture(scope="session")
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink().start()
    yield sink
    sink.stop()


@pytest.fixture(autouse=True)
def _sink_answers_normally(smtp_sink: SmtpSink) -> Iterator[None]:
    yield
    smtp_sink.replies.clear()
    smtp_sink.always.clear()


FAST_RETRIES = DeliverySettings(
    backoff_base_seconds=0.05,
    backoff_max_seconds=0.2,
    poll_interval_seconds=0.1,
    max_attempts=3,
)


@pytest.fixture(scope="session")
def settings_for(
    notifications_database_url: str, redis_url: str, smtp_sink: SmtpSink
) -> Callable[..., Settings]:
    def factory(**notifications: Any) -> Settings:
        top = {k: notifications.pop(k) for k in ("plugins", "master_key") if k in notifications}
        notifications.setdefault("email", EmailSettings(port=smtp_sink.port, connections=4))
        notifications.setdefault("delivery", FAST_RETRIES)
        notifications.setdefault("webhook", WebhookSettings(allow_networks=["127.0.0.0/8"]))
        top.setdefault("plugins", offline_auth_plugin())
        return make_settings(
            Settings,
            database_url=notifications_database_url,
            redis_url=redis_url,
            notifications=NotificationsSettings(**notifications),
            **top,
        )

    return factory


BASE_URL = "http://notifications.test"
# The app with its lifespan (and delivery worker) started, and an in-process client.
running = partial(running_app, base_url=BASE_URL)


@pytest.fixture(scope="session")
async def app(settings_for: Callable[..., Settings]) -> AsyncIterator[FastAPI]:
    application = create_app(settings_for())
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(app, base_url=BASE_URL) as c:
        yield c


@pytest.fixture(scope="session")
async def engine(notifications_database_url: str) -> AsyncIterator[AsyncEngine]:
    async with schema_engine(Settings, notifications_database_url, schema="notifications") as e:
        yield e


@pytest.fixture
def known_user(engine: AsyncEngine) -> Callable[..., Any]:
    """A user whose email auth told us about (as `auth.user_registered` does); their headers."""
    from sqlalchemy.ext.asyncio import AsyncSession

    from notifications_service.recipients import remember_contact

    async def make(email: str | None = None, **identity: Any) -> tuple[dict[str, str], str]:
        address = email or new_email()
        headers = caller(**identity)
        async with AsyncSession(engine) as db:
            await remember_contact(db, user_id=user_of(headers), email=address)
            await db.commit()
        return headers, address

    return make


@pytest.fixture
def serve() -> Callable[..., Any]:
    """`async with serve(app) as client`: a separately configured app, lifespan included."""
    return running

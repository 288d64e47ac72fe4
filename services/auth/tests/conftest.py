"""Fixtures for the auth service: its migrated schema, a running app and small factories."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC
from functools import partial
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from auth_service.app import create_app
from auth_service.settings import (
    AuthSettings,
    LoginThrottleSettings,
    PasswordHashSettings,
    Settings,
)
from keelson.bus import stream_key
from keelson.keys import DecryptionError, KeyManager, open_action_token
from keelson_dev.testing import asgi_client, make_settings, migrated, running_app, schema_engine

PASSWORD = "plum tractors sing quietly"
CLIENT_IP = "198.51.100.7"
# Low argon2 cost keeps the suite fast; the benchmark measures the configured one.
FAST_HASHING = PasswordHashSettings(time_cost=1, memory_cost=1024, parallelism=1)


@pytest.fixture(scope="session")
def auth_database_url(test_database_url: str) -> str:
    return migrated(test_database_url, "auth_service")


@pytest.fixture(scope="session")
def auth_settings_factory(auth_database_url: str, redis_url: str) -> Callable[..., Settings]:
    def factory(**auth: Any) -> Settings:
        top = {k: auth.pop(k) for k in ("admin_email", "admin_password") if k in auth}
        auth.setdefault("password", FAST_HASHING)
        # Tests ask for several emailed tokens in a row; the cooldown has its own test.
        auth.setdefault("email_token_cooldown_seconds", 0)
        auth.setdefault(
            "throttle",
            LoginThrottleSettings(max_account_failures=5, max_ip_failures=10_000),
        )
        return make_settings(
            Settings,
            database_url=auth_database_url,
            redis_url=redis_url,
            auth=AuthSettings(**auth),
            **top,
        )

    return factory


BASE_URL = "http://auth.test"
# The app with its lifespan started, and a client that talks to it in-process.
running = partial(running_app, base_url=BASE_URL, client_ip=CLIENT_IP)


@pytest.fixture(scope="session")
async def auth_app(auth_settings_factory: Callable[..., Settings]) -> AsyncIterator[FastAPI]:
    app = create_app(auth_settings_factory())
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def client(auth_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(auth_app, base_url=BASE_URL, client_ip=CLIENT_IP) as client:
        yield client


@pytest.fixture(scope="session")
async def auth_engine(auth_database_url: str) -> AsyncIterator[AsyncEngine]:
    async with schema_engine(Settings, auth_database_url, schema="auth") as engine:
        yield engine


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}@example.com"


@pytest.fixture
def new_email() -> Callable[..., str]:
    return unique_email


@pytest.fixture
def register(auth_engine: AsyncEngine) -> Callable[..., Awaitable[dict[str, Any]]]:
    """Sign up through the API (202, which says nothing), then read the account back."""

    async def register(
        client: httpx.AsyncClient, email: str | None = None, password: str = PASSWORD
    ) -> dict[str, Any]:
        email = email or unique_email()
        response = await client.post(
            "/api/v1/auth/register", json={"email": email, "password": password, "name": "Ada"}
        )
        assert response.status_code == 202, response.text
        account = await find_account(auth_engine, email)
        assert account is not None
        return {**account, "password": password}

    return register


@pytest.fixture
def stored_account(auth_engine: AsyncEngine) -> Callable[[str], Awaitable[dict[str, Any] | None]]:
    """The stored account of an email as the API shows it, or None."""

    async def stored_account(email: str) -> dict[str, Any] | None:
        return await find_account(auth_engine, email)

    return stored_account


async def find_account(engine: AsyncEngine, email: str) -> dict[str, Any] | None:
    """The stored account of `email` as the API shows it, or None."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT id, email, name, phone, roles, created_at,"
                    " email_verified_at IS NOT NULL AS verified"
                    " FROM auth.users WHERE email = :email"
                ),
                {"email": email.strip().lower()},
            )
        ).first()
    if row is None:
        return None
    return {
        "id": str(row.id),
        "email": row.email,
        "name": row.name,
        "phone": row.phone,
        "roles": list(row.roles),
        "email_verified": row.verified,
        "created_at": row.created_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
    }


@pytest.fixture
def login() -> Callable[..., Awaitable[dict[str, Any]]]:
    async def login(
        client: httpx.AsyncClient, email: str, password: str = PASSWORD
    ) -> dict[str, Any]:
        response = await client.post(
            "/api/v1/auth/login", json={"email": email, "password": password}
        )
        assert response.status_code == 200, response.text
        tokens: dict[str, Any] = response.json()
        return tokens

    return login


@pytest.fixture
def signed_in(
    client: httpx.AsyncClient,
    register: Callable[..., Awaitable[dict[str, Any]]],
    login: Callable[..., Awaitable[dict[str, Any]]],
) -> Callable[..., Awaitable[tuple[dict[str, Any], dict[str, Any]]]]:
    """A new user and its first token pair."""

    async def signed_in(email: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        user = await register(client, email)
        return user, await login(client, user["email"])

    return signed_in


@pytest.fixture
def outbox(
    auth_engine: AsyncEngine, redis_url: str
) -> Callable[..., Awaitable[list[dict[str, Any]]]]:
    """Envelopes auth emitted for `topic`, oldest first (optionally about one user): the
    rows still in its outbox, and those the relay published to the bus (the rows of
    events carrying a sealed token are deleted once published).

    A sealed `token` is opened, as the notifications service opens it to mail the link.
    """

    async def outbox(topic: str, *, user_id: str | None = None) -> list[dict[str, Any]]:
        # The table first: a row the relay publishes meanwhile is on the stream by then.
        async with auth_engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT payload FROM auth.outbox WHERE topic = :topic ORDER BY id"),
                {"topic": topic},
            )
            envelopes = {row.payload["id"]: row.payload for row in rows}
        redis = Redis.from_url(redis_url)
        try:
            entries = await redis.xrange(stream_key(topic))
        finally:
            await redis.aclose()
        opened = {key: _opened(envelope) for key, envelope in envelopes.items()}
        for _, fields in entries:
            envelope = json.loads(fields[b"e"])
            if envelope.get("producer") != "auth" or envelope["id"] in opened:
                continue
            try:
                opened[envelope["id"]] = _opened(envelope)
            except DecryptionError:
                continue  # another test session's event on the shared Redis, not this auth's
        found = sorted(opened.values(), key=lambda e: (e["occurred_at"], e["id"]))
        if user_id is not None:
            found = [e for e in found if e["data"].get("user_id") == user_id]
        return found

    return outbox


def _opened(envelope: dict[str, Any]) -> dict[str, Any]:
    data = envelope["data"]
    if "token" not in data:
        return envelope
    keys = KeyManager(Settings().master_key.get_secret_value())
    token = open_action_token(
        keys, data["token"], event_type=envelope["type"], user_id=data["user_id"]
    )
    return {**envelope, "data": {**data, "token": token}, "sealed_token": data["token"]}


@pytest.fixture
def grant_admin(auth_engine: AsyncEngine) -> Callable[[str], Awaitable[None]]:
    async def grant_admin(user_id: str) -> None:
        async with auth_engine.begin() as conn:
            await conn.execute(
                text("UPDATE auth.users SET roles = ARRAY['user', 'admin'] WHERE id = :id"),
                {"id": user_id},
            )

    return grant_admin


@pytest.fixture
def expire_action_tokens(auth_engine: AsyncEngine) -> Callable[[str], Awaitable[None]]:
    """Put every emailed token of a user (verification, password reset) past its expiry."""

    async def expire_action_tokens(user_id: str) -> None:
        async with auth_engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE auth.action_tokens SET expires_at = now() - interval '1 second'"
                    " WHERE user_id = :id"
                ),
                {"id": user_id},
            )

    return expire_action_tokens


def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


@pytest.fixture
def auth_header() -> Callable[[dict[str, Any]], dict[str, str]]:
    return bearer


@pytest.fixture
def serve() -> Callable[..., Any]:
    """`async with serve(app, client_ip=...) as client`: a separately configured app."""
    return running


@pytest.fixture
def password() -> str:
    return PASSWORD


@pytest.fixture
async def no_admins(auth_engine: AsyncEngine) -> AsyncIterator[None]:
    """No account holds the admin role during the test; the roles come back afterwards."""
    async with auth_engine.begin() as conn:
        rows = await conn.execute(
            text(
                "UPDATE auth.users SET roles = array_remove(roles, 'admin')"
                " WHERE 'admin' = ANY(roles) RETURNING id"
            )
        )
        demoted = [row.id for row in rows]
    yield
    async with auth_engine.begin() as conn:
        for user_id in demoted:
            await conn.execute(
                text("UPDATE auth.users SET roles = roles || '{admin}' WHERE id = :id"),
                {"id": user_id},
            )

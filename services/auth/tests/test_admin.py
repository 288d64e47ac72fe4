"""The first admin from KEELSON_ADMIN_EMAIL / KEELSON_ADMIN_PASSWORD, and
`python -m auth_service admin create-admin` (auth_service.cli)."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from auth_service.app import create_app
from auth_service.cli import main

Login = Callable[..., Awaitable[dict[str, Any]]]


async def _roles(engine: AsyncEngine, email: str) -> list[str] | None:
    async with engine.connect() as conn:
        row = (
            await conn.execute(text("SELECT roles FROM auth.users WHERE email = :e"), {"e": email})
        ).first()
    return None if row is None else list(row.roles)


async def test_first_admin_is_created_at_start_when_none_exists(
    no_admins: None,
    auth_settings_factory: Callable[..., Any],
    serve: Callable[..., Any],
    login: Login,
    new_email: Callable[..., str],
    auth_engine: AsyncEngine,
) -> None:
    email = new_email("admin")
    settings = auth_settings_factory(
        admin_email=email, admin_password=SecretStr("first admin pass phrase")
    )
    async with serve(create_app(settings)) as client:
        tokens = await login(client, email, "first admin pass phrase")
        users = await client.get(
            "/api/v1/auth/users", headers={"Authorization": f"Bearer {tokens['access_token']}"}
        )
        assert users.status_code == 200
    assert await _roles(auth_engine, email) == ["admin", "user"]

    # With an admin present, another configured address is left alone.
    second = new_email("admin")
    settings = auth_settings_factory(
        admin_email=second, admin_password=SecretStr("second admin pass phrase")
    )
    async with serve(create_app(settings)):
        pass
    assert await _roles(auth_engine, second) is None


async def test_create_admin_command_creates_then_promotes(
    auth_database_url: str,
    auth_engine: AsyncEngine,
    new_email: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KEELSON_DATABASE_URL", auth_database_url)
    monkeypatch.setenv("KEELSON_AUTH__PASSWORD__TIME_COST", "1")
    monkeypatch.setenv("KEELSON_AUTH__PASSWORD__MEMORY_COST", "1024")
    monkeypatch.setenv("KEELSON_ADMIN_PASSWORD", "command line pass phrase")
    email = new_email("ops")
    assert await asyncio.to_thread(main, ["create-admin", email]) == 0
    assert await _roles(auth_engine, email) == ["admin", "user"]

    async with auth_engine.begin() as conn:
        await conn.execute(
            text("UPDATE auth.users SET roles = '{user}' WHERE email = :e"), {"e": email}
        )
    monkeypatch.delenv("KEELSON_ADMIN_PASSWORD")
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO(""))
    assert await asyncio.to_thread(main, ["create-admin", email]) == 0
    assert await _roles(auth_engine, email) == ["admin", "user"]


async def test_create_admin_refuses_a_weak_password(
    auth_database_url: str,
    new_email: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("KEELSON_DATABASE_URL", auth_database_url)
    monkeypatch.setenv("KEELSON_ADMIN_PASSWORD", "short")
    assert await asyncio.to_thread(main, ["create-admin", new_email("ops")]) == 1
    assert "at least 12 characters" in capsys.readouterr().err


async def test_first_admin_takes_over_an_account_registered_before_it(
    no_admins: None,
    client: Any,
    auth_settings_factory: Callable[..., Any],
    serve: Callable[..., Any],
    register: Callable[..., Awaitable[dict[str, Any]]],
    login: Login,
    new_email: Callable[..., str],
) -> None:
    email = new_email("admin")
    squatter = await register(client, email)
    squatter_tokens = await login(client, email)
    settings = auth_settings_factory(
        admin_email=email, admin_password=SecretStr("operator chosen pass phrase")
    )
    async with serve(create_app(settings)) as admin_client:
        refused = await admin_client.post(
            "/api/v1/auth/login", json={"email": email, "password": squatter["password"]}
        )
        assert refused.status_code == 401
        stale = await admin_client.post(
            "/api/v1/auth/refresh", json={"refresh_token": squatter_tokens["refresh_token"]}
        )
        assert stale.status_code == 401
        old_access = {"Authorization": f"Bearer {squatter_tokens['access_token']}"}
        assert (await admin_client.get("/api/v1/auth/me", headers=old_access)).status_code == 401
        tokens = await login(admin_client, email, "operator chosen pass phrase")
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        me = await admin_client.get("/api/v1/auth/me", headers=headers)
        assert me.json()["roles"] == ["admin", "user"] and me.json()["email_verified"] is True

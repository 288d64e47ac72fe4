"""Signing-key rotation: the new key signs, the old one keeps verifying, then retires."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from jose import jwt
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from auth_service.app import create_app
from auth_service.keyring import key_cipher, rotate_signing_keys
from auth_service.plugin import KEYRING
from keelson.auth import JwksClient, TokenVerifier
from keelson.config import KeelsonSettings
from keelson.keys import KeyManager

Register = Callable[..., Awaitable[dict[str, Any]]]
Login = Callable[..., Awaitable[dict[str, Any]]]


async def _rotate(engine: AsyncEngine, grace: timedelta) -> tuple[str, list[str]]:
    cipher = key_cipher(KeyManager(KeelsonSettings().master_key.get_secret_value()))
    async with async_sessionmaker(engine)() as db:
        assert isinstance(db, AsyncSession)
        result = await rotate_signing_keys(db, cipher=cipher, grace=grace)
        await db.commit()
    return result


async def _kid(tokens: dict[str, Any]) -> str:
    kid: str = jwt.get_unverified_header(tokens["access_token"])["kid"]
    return kid


async def _wait_for(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_rotation_adds_a_signing_key_and_the_old_one_still_verifies(
    auth_settings_factory: Callable[..., Any],
    serve: Callable[..., Any],
    register: Register,
    login: Login,
    auth_engine: AsyncEngine,
) -> None:
    app = create_app(auth_settings_factory(key_reload_seconds=0.1, key_activation_seconds=0))
    async with serve(app) as client:
        keyring = app.state.container.resolve(KEYRING)
        user = await register(client)
        before = await login(client, user["email"])
        old_kid = await _kid(before)

        # A verifier elsewhere (the gateway) that has cached the JWKS before the rotation.
        remote = JwksClient(
            client, "http://auth.test/.well-known/jwks.json", min_refresh_interval=0
        )
        verifier = TokenVerifier(remote)
        await verifier.verify(before["access_token"])
        fetches = remote.fetches

        new_kid, retired = await _rotate(auth_engine, grace=timedelta(minutes=20))
        assert retired == []
        await _wait_for(lambda: keyring.active.kid == new_kid)

        after = await login(client, user["email"])
        assert await _kid(after) == new_kid != old_kid
        for tokens in (before, after):
            me = await client.get(
                "/api/v1/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
            )
            assert me.status_code == 200
        jwks = (await client.get("/.well-known/jwks.json")).json()
        assert {old_kid, new_kid} <= {key["kid"] for key in jwks["keys"]}

        # The unknown kid makes the remote verifier refetch once, then it verifies.
        principal = await verifier.verify(after["access_token"])
        assert principal.user_id == user["id"]
        assert remote.fetches == fetches + 1


async def test_rotation_retires_keys_superseded_longer_than_the_grace(
    auth_settings_factory: Callable[..., Any],
    serve: Callable[..., Any],
    register: Register,
    login: Login,
    auth_engine: AsyncEngine,
) -> None:
    app = create_app(auth_settings_factory(key_reload_seconds=0.1, key_activation_seconds=0))
    async with serve(app) as client:
        keyring = app.state.container.resolve(KEYRING)
        user = await register(client)
        old = await login(client, user["email"])
        middle_kid, _ = await _rotate(auth_engine, grace=timedelta(minutes=20))
        newest_kid, retired = await _rotate(auth_engine, grace=timedelta(0))
        # The key that signed until this rotation keeps verifying: its tokens are live.
        assert await _kid(old) in retired and middle_kid not in retired
        await _wait_for(lambda: keyring.active.kid == newest_kid)
        assert [key["kid"] for key in keyring.jwks()["keys"]] == [middle_kid, newest_kid]
        refused = await client.get(
            "/api/v1/auth/me", headers={"Authorization": f"Bearer {old['access_token']}"}
        )
        assert refused.status_code == 401
        fresh = await login(client, user["email"])
        assert await _kid(fresh) == newest_kid


async def test_private_keys_are_stored_sealed(auth_app: Any, auth_engine: AsyncEngine) -> None:
    async with auth_engine.connect() as conn:
        sealed = (
            await conn.execute(text("SELECT private_pem_sealed FROM auth.signing_keys"))
        ).all()
    assert sealed
    assert all("PRIVATE KEY" not in row.private_pem_sealed for row in sealed)


async def test_rotate_keys_command(
    auth_database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from keelson.cli import main

    monkeypatch.setenv("KEELSON_DATABASE_URL", auth_database_url)
    assert await asyncio.to_thread(main, ["auth", "rotate-keys"]) == 0
    new_kid = capsys.readouterr().out.split()[3]
    assert await asyncio.to_thread(main, ["auth", "list-keys"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # Published at once, signing only after the activation delay (120 s by default).
    assert lines[-1].startswith(new_kid) and lines[-1].endswith("published")
    assert sum(line.endswith("signing") for line in lines) == 1


async def test_a_new_key_is_published_before_it_signs(
    auth_settings_factory: Callable[..., Any],
    serve: Callable[..., Any],
    register: Register,
    login: Login,
    auth_engine: AsyncEngine,
) -> None:
    # Every replica must serve a key in its JWKS before any replica signs with it, or a
    # verifier asking another replica would refuse the new tokens.
    app = create_app(auth_settings_factory(key_reload_seconds=0.1, key_activation_seconds=3600))
    async with serve(app) as client:
        keyring = app.state.container.resolve(KEYRING)
        user = await register(client)
        before = await _kid(await login(client, user["email"]))
        new_kid, _ = await _rotate(auth_engine, grace=timedelta(hours=2))
        await _wait_for(lambda: new_kid in {key["kid"] for key in keyring.jwks()["keys"]})
        jwks = (await client.get("/.well-known/jwks.json")).json()
        assert new_kid in {key["kid"] for key in jwks["keys"]}
        assert await _kid(await login(client, user["email"])) == before != new_kid

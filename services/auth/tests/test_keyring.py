"""Signing-key rotation: the new key signs, the old one keeps verifying, then retires."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from jose import jwt
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from auth_service.app import create_app
from auth_service.keyring import KeyRing, key_cipher, rotate_signing_keys
from auth_service.plugin import KEYRING
from keelson.auth import JwksClient, TokenVerifier
from keelson.config import KeelsonSettings
from keelson.keys import KeyManager
from keelson_dev.testing import eventually

Register = Callable[..., Awaitable[dict[str, Any]]]
Login = Callable[..., Awaitable[dict[str, Any]]]


async def _rotate(engine: AsyncEngine, grace: timedelta) -> tuple[str, list[str]]:
    cipher = key_cipher(KeyManager(KeelsonSettings().master_key.get_secret_value()))
    async with async_sessionmaker(engine)() as db:
        assert isinstance(db, AsyncSession)
        result = await rotate_signing_keys(db, cipher=cipher, grace=grace)
        await db.commit()
    return result


def _kid(tokens: dict[str, Any]) -> str:
    kid: str = jwt.get_unverified_header(tokens["access_token"])["kid"]
    return kid


@dataclass
class Rotating:
    """An auth app that reloads its keys every 0.1 s, a user and that user's first tokens."""

    client: httpx.AsyncClient
    keyring: KeyRing
    user: dict[str, Any]
    first: dict[str, Any]

    async def login(self) -> dict[str, Any]:
        response = await self.client.post(
            "/api/v1/auth/login",
            json={"email": self.user["email"], "password": self.user["password"]},
        )
        assert response.status_code == 200
        tokens: dict[str, Any] = response.json()
        return tokens

    async def me(self, tokens: dict[str, Any]) -> int:
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        return (await self.client.get("/api/v1/auth/me", headers=headers)).status_code

    async def signs_with(self, kid: str) -> None:
        await eventually(lambda: self.keyring.active.kid == kid)


def _rotating(activation: float) -> Callable[..., Any]:
    async def fixture(
        auth_settings_factory: Callable[..., Any],
        serve: Callable[..., Any],
        register: Register,
        login: Login,
    ) -> AsyncIterator[Rotating]:
        settings = auth_settings_factory(key_reload_seconds=0.1, key_activation_seconds=activation)
        app = create_app(settings)
        async with serve(app) as client:
            user = await register(client)
            first = await login(client, user["email"])
            yield Rotating(client, app.state.container.resolve(KEYRING), user, first)

    return fixture


rotating = pytest.fixture(_rotating(activation=0))
rotating_slowly = pytest.fixture(_rotating(activation=3600))


async def test_rotation_adds_a_signing_key_and_the_old_one_still_verifies(
    rotating: Rotating, auth_engine: AsyncEngine
) -> None:
    old_kid = _kid(rotating.first)
    # A verifier elsewhere (the gateway) that has cached the JWKS before the rotation.
    remote = JwksClient(
        rotating.client, "http://auth.test/.well-known/jwks.json", min_refresh_interval=0
    )
    verifier = TokenVerifier(remote)
    await verifier.verify(rotating.first["access_token"])
    fetches = remote.fetches

    new_kid, retired = await _rotate(auth_engine, grace=timedelta(minutes=20))
    assert retired == []
    await rotating.signs_with(new_kid)

    after = await rotating.login()
    assert _kid(after) == new_kid != old_kid
    assert await rotating.me(rotating.first) == await rotating.me(after) == 200
    jwks = (await rotating.client.get("/.well-known/jwks.json")).json()
    assert {old_kid, new_kid} <= {key["kid"] for key in jwks["keys"]}

    # The unknown kid makes the remote verifier refetch once, then it verifies.
    principal = await verifier.verify(after["access_token"])
    assert principal.user_id == rotating.user["id"]
    assert remote.fetches == fetches + 1


async def test_rotation_retires_keys_superseded_longer_than_the_grace(
    rotating: Rotating, auth_engine: AsyncEngine
) -> None:
    middle_kid, _ = await _rotate(auth_engine, grace=timedelta(minutes=20))
    newest_kid, retired = await _rotate(auth_engine, grace=timedelta(0))
    # The key that signed until this rotation keeps verifying: its tokens are live.
    assert _kid(rotating.first) in retired and middle_kid not in retired
    await rotating.signs_with(newest_kid)
    assert [key["kid"] for key in rotating.keyring.jwks()["keys"]] == [middle_kid, newest_kid]
    assert await rotating.me(rotating.first) == 401
    assert _kid(await rotating.login()) == newest_kid


async def test_a_new_key_is_published_before_it_signs(
    rotating_slowly: Rotating, auth_engine: AsyncEngine
) -> None:
    # Every replica must serve a key in its JWKS before any replica signs with it, or a
    # verifier asking another replica would refuse the new tokens.
    before = _kid(rotating_slowly.first)
    new_kid, _ = await _rotate(auth_engine, grace=timedelta(hours=2))
    await eventually(lambda: new_kid in {k["kid"] for k in rotating_slowly.keyring.jwks()["keys"]})
    jwks = (await rotating_slowly.client.get("/.well-known/jwks.json")).json()
    assert new_kid in {key["kid"] for key in jwks["keys"]}
    assert _kid(await rotating_slowly.login()) == before != new_kid


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
    from auth_service.cli import main

    monkeypatch.setenv("KEELSON_DATABASE_URL", auth_database_url)
    assert await asyncio.to_thread(main, ["rotate-keys"]) == 0
    new_kid = capsys.readouterr().out.split()[3]
    assert await asyncio.to_thread(main, ["list-keys"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # Published at once, signing only after the activation delay (120 s by default).
    assert lines[-1].startswith(new_kid) and lines[-1].endswith("published")
    assert sum(line.endswith("signing") for line in lines) == 1

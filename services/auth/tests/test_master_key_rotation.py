"""Rotating the master key: auth restarts on the new key, old tokens verify, old rows move over.

The rotation as documented: set a new `KEELSON_MASTER_KEY` with the old one in
`KEELSON_PREVIOUS_MASTER_KEYS`, restart, run `keelson auth reencrypt`, then drop the old key.
It runs on a database of its own: re-sealing its keys would lock the session's app out.
"""

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import text

from auth_service.app import create_app
from auth_service.cli import main
from auth_service.commands import rotate_keys
from auth_service.keyring import key_cipher
from auth_service.plugin import SUCCESSOR_CIPHER_PURPOSE
from auth_service.settings import Settings
from keelson.db import create_engine
from keelson.keys import DecryptionError, KeyManager
from keelson_dev.testing import fresh_database, migrated

OLD = "the-old-master-key-" + "o" * 30
NEW = "the-new-master-key-" + "n" * 30


@pytest.fixture
def rotation_database(postgres_server_url: str) -> Iterator[str]:
    with fresh_database(postgres_server_url, prefix="keelson_rotation") as url:
        yield migrated(url, "auth_service")


async def _sealed(settings: Settings) -> dict[str, Any]:
    engine = create_engine(settings, schema="auth")
    try:
        async with engine.connect() as conn:
            keys = {
                row.kid: row.private_pem_sealed
                for row in await conn.execute(
                    text("SELECT kid, private_pem_sealed FROM auth.signing_keys")
                )
            }
            successors = [
                (row.token_hash, row.successor_sealed)
                for row in await conn.execute(
                    text(
                        "SELECT token_hash, successor_sealed FROM auth.refresh_tokens"
                        " WHERE successor_sealed IS NOT NULL"
                    )
                )
            ]
    finally:
        await engine.dispose()
    return {"keys": keys, "successors": successors}


def _opens(master: str, sealed: dict[str, Any]) -> bool:
    """Whether `master` alone (no previous key) unseals every stored secret."""
    keys = KeyManager(master)
    try:
        for kid, value in sealed["keys"].items():
            key_cipher(keys).decrypt(value, associated=kid.encode())
        for token_hash, value in sealed["successors"]:
            keys.field_cipher(SUCCESSOR_CIPHER_PURPOSE).decrypt(value, associated=token_hash)
    except DecryptionError:
        return False
    return True


async def test_the_whole_master_key_rotation(
    rotation_database: str,
    auth_settings_factory: Callable[..., Settings],
    serve: Callable[..., Any],
    login: Callable[..., Any],
    new_email: Callable[..., str],
    password: str,
    auth_header: Callable[[dict[str, Any]], dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def settings(master: str, *previous: str) -> Settings:
        base = auth_settings_factory()
        return base.model_copy(
            update={
                "database_url": rotation_database,
                "master_key": SecretStr(master),
                "previous_master_keys": [SecretStr(key) for key in previous],
            }
        )

    async with serve(create_app(settings(OLD))) as client:
        email = new_email()
        signed_up = await client.post(
            "/api/v1/auth/register", json={"email": email, "password": password}
        )
        assert signed_up.status_code == 202
        before = await login(client, email)
        spent = await login(client, email)
        await client.post("/api/v1/auth/refresh", json={"refresh_token": spent["refresh_token"]})
    sealed = await _sealed(settings(OLD))
    assert sealed["successors"] and _opens(OLD, sealed) and not _opens(NEW, sealed)

    rotated = settings(NEW, OLD)
    async with serve(create_app(rotated)) as client:
        assert (await client.get("/api/v1/auth/me", headers=auth_header(before))).status_code == 200
        assert (
            await client.post(
                "/api/v1/auth/refresh", json={"refresh_token": before["refresh_token"]}
            )
        ).status_code == 200
    kid, _ = await rotate_keys(rotated)
    new_key = (await _sealed(rotated))["keys"][kid]
    key_cipher(KeyManager(NEW)).decrypt(new_key, associated=kid.encode())
    assert not _opens(NEW, await _sealed(rotated))  # the rows sealed before, until re-encrypted

    for name, value in {
        "KEELSON_DATABASE_URL": rotation_database,
        "KEELSON_MASTER_KEY": NEW,
        "KEELSON_PREVIOUS_MASTER_KEYS": f'["{OLD}"]',
    }.items():
        monkeypatch.setenv(name, value)
    assert await asyncio.to_thread(main, ["reencrypt"]) == 0
    assert _opens(NEW, await _sealed(rotated))

    # The old key can go now: auth starts on the new one alone and old tokens still verify.
    async with serve(create_app(settings(NEW))) as client:
        assert (await client.get("/api/v1/auth/me", headers=auth_header(before))).status_code == 200


async def test_reencrypt_without_the_old_key_says_what_is_missing(
    rotation_database: str,
    auth_settings_factory: Callable[..., Settings],
    serve: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    old = auth_settings_factory().model_copy(
        update={"database_url": rotation_database, "master_key": SecretStr(OLD)}
    )
    async with serve(create_app(old)):
        pass
    monkeypatch.setenv("KEELSON_DATABASE_URL", rotation_database)
    monkeypatch.setenv("KEELSON_MASTER_KEY", NEW)
    monkeypatch.delenv("KEELSON_PREVIOUS_MASTER_KEYS", raising=False)
    assert await asyncio.to_thread(main, ["reencrypt"]) == 1
    err = capsys.readouterr().err
    assert "KEELSON_PREVIOUS_MASTER_KEYS" in err and OLD not in err and NEW not in err

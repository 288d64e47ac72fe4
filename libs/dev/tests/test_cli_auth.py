"""`keelson create-admin` and `keelson auth ...` run the auth service's own command,
`python -m auth_service admin ...`, as a subprocess, with `keelson up`'s master key."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from keelson.db import plain_url
from keelson_dev.cli.auth import admin_command, admin_environment
from keelson_dev.testing import fresh_database

KEELSON = Path(sys.executable).parent / "keelson"
SUITE_KEY = "the-suite-s-own-master-key-" + "k" * 24


def _clean_environment(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEELSON_")}
    # Low argon2 cost keeps the test fast.
    env.update(KEELSON_AUTH__PASSWORD__TIME_COST="1", KEELSON_AUTH__PASSWORD__MEMORY_COST="1024")
    return {**env, **values}


def _run(
    command: list[str], cwd: Path, env: dict[str, str], stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def auth_database(postgres_server_url: str, tmp_path: Path) -> Iterator[str]:
    """A database with the auth schema, migrated by `python -m auth_service --migrate-only`."""
    with fresh_database(postgres_server_url, prefix="keelson_cli") as url:
        env = _clean_environment(KEELSON_DATABASE_URL=url)
        migrated = _run([sys.executable, "-m", "auth_service", "--migrate-only"], tmp_path, env)
        assert migrated.returncode == 0, migrated.stderr
        yield url


def _roles(url: str, email: str) -> list[str] | None:
    async def query() -> list[str] | None:
        conn = await asyncpg.connect(plain_url(url))
        try:
            roles = await conn.fetchval("SELECT roles FROM auth.users WHERE email = $1", email)
        finally:
            await conn.close()
        return None if roles is None else list(roles)

    return asyncio.run(query())


def test_create_admin_runs_the_auth_service_command(auth_database: str, tmp_path: Path) -> None:
    env = _clean_environment(KEELSON_DATABASE_URL=auth_database)
    email = "ops-admin@example.com"
    created = _run([str(KEELSON), "create-admin", email], tmp_path, env, "cli admin pass phrase\n")
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip() == f"created admin {email}"
    assert _roles(auth_database, email) == ["admin", "user"]

    # Again with nothing on standard input: the account keeps its password, stays admin.
    promoted = _run([str(KEELSON), "create-admin", email], tmp_path, env)
    assert promoted.returncode == 0, promoted.stderr
    assert promoted.stdout.strip() == f"promoted admin {email}"

    weak = _run([str(KEELSON), "create-admin", "weak@example.com"], tmp_path, env, "short\n")
    assert weak.returncode == 1
    assert "python -m auth_service admin create-admin:" in weak.stderr
    assert "at least 12 characters" in weak.stderr
    assert _roles(auth_database, "weak@example.com") is None


def test_auth_commands_use_the_master_key_of_keelson_up(auth_database: str, tmp_path: Path) -> None:
    (tmp_path / ".keelson").mkdir()
    (tmp_path / ".keelson" / "master.key").write_text(SUITE_KEY + "\n")
    env = _clean_environment(KEELSON_DATABASE_URL=auth_database)
    rotated = _run([str(KEELSON), "auth", "rotate-keys"], tmp_path, env)
    assert rotated.returncode == 0, rotated.stderr
    kid = rotated.stdout.split()[3]
    listed = _run([str(KEELSON), "auth", "list-keys"], tmp_path, env)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[-1].startswith(kid)

    # The new key was sealed under the suite's key, not the development constant: only
    # the service's command given that key opens it.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    without = _run(admin_command(["reencrypt"]), elsewhere, env)
    assert without.returncode == 1
    assert "KEELSON_PREVIOUS_MASTER_KEYS" in without.stderr
    with_key = _run(
        admin_command(["reencrypt"]), elsewhere, {**env, "KEELSON_MASTER_KEY": SUITE_KEY}
    )
    assert with_key.returncode == 0, with_key.stderr
    # Opened under the current key: nothing to move.
    assert with_key.stdout.startswith("resealed 0 signing keys")


def test_a_configured_master_key_wins_over_the_state_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in [name for name in os.environ if name.startswith("KEELSON_")]:
        monkeypatch.delenv(name)
    assert "KEELSON_MASTER_KEY" not in admin_environment(os.environ)  # no state folder

    state = tmp_path / ".keelson"
    state.mkdir()
    (state / "master.key").write_text(SUITE_KEY + "\n")
    assert admin_environment(os.environ, state)["KEELSON_MASTER_KEY"] == SUITE_KEY

    configured = "a-configured-master-key-" + "c" * 24
    monkeypatch.setenv("KEELSON_MASTER_KEY", configured)
    assert admin_environment(os.environ, state)["KEELSON_MASTER_KEY"] == configured

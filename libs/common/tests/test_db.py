"""Each service's schema with its own Alembic version table, on a real PostgreSQL."""

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr
from sqlalchemy import Column, Integer, MetaData, Table, exc, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from keelson.config import DatabaseSettings, KeelsonSettings, LogSettings
from keelson.db import (
    DB_ENGINE,
    DB_SESSIONS,
    DatabasePlugin,
    EncryptedString,
    advisory_xact_lock,
    async_url,
    configure_field_encryption,
    create_engine,
    migrate,
    migration_lock,
    plain_url,
    reencrypt_column,
)
from keelson.keys import DecryptionError, KeyManager
from keelson.plugins import PluginContainer
from keelson_dev.embedded import free_port
from keelson_dev.testing import eventually, fresh_database

ROOT = Path(__file__).resolve().parents[3]


def test_async_url_normalises_drivers() -> None:
    assert async_url("postgres://u:p@h:5/d") == "postgresql+asyncpg://u:p@h:5/d"
    assert async_url("postgresql://u@h/d") == "postgresql+asyncpg://u@h/d"


def test_plain_url_is_what_asyncpg_and_psql_take() -> None:
    assert plain_url("postgresql+asyncpg://u:p@h:5/d") == "postgresql://u:p@h:5/d"
    assert plain_url("postgres://u@h/d") == "postgresql://u@h/d"


async def test_migrations_live_in_their_own_schema(test_database_url: str) -> None:
    for service, package in (("auth", "auth_service"), ("payments", "payments_service")):
        migrations = ROOT / "services" / service / package / "migrations"
        await asyncio.to_thread(migrate, migrations, test_database_url)
    engine = create_engine(KeelsonSettings(database_url=test_database_url), schema="auth")
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT table_schema FROM information_schema.tables "
                "WHERE table_name = 'alembic_version' ORDER BY table_schema"
            )
        )
        assert {"auth", "payments"} <= {r[0] for r in rows}
        versions = await conn.execute(text("SELECT version_num FROM auth.alembic_version"))
        assert versions.scalar_one().startswith("auth_")
        path = await conn.execute(text("SHOW search_path"))
        assert path.scalar_one().startswith("auth")
    await engine.dispose()
    # Running again is a no-op, not an error.
    await asyncio.to_thread(
        migrate, ROOT / "services/auth/auth_service/migrations", test_database_url
    )


async def test_plugin_sessions_and_health(test_database_url: str) -> None:
    settings = KeelsonSettings(
        service="payments", database_url=test_database_url, log=LogSettings(ship_endpoint=None)
    )
    container = PluginContainer(settings)
    container.register(DatabasePlugin)
    await container.start()
    async with container.resolve(DB_SESSIONS)() as session:
        schema = await session.execute(text("SELECT current_schema()"))
        assert schema.scalar_one() == "payments"
    assert (await container.health())["database"]["healthy"] is True
    await container.stop()


async def test_health_reports_an_unreachable_database() -> None:
    settings = KeelsonSettings(
        service="auth",
        database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere",
        log=LogSettings(ship_endpoint=None),
    )
    container = PluginContainer(settings)
    container.register(DatabasePlugin)
    await container.start()  # starting does not need the database to be up
    report = (await container.health())["database"]
    assert report["healthy"] is False
    assert "refused" in report["detail"].lower() or "connect" in report["detail"].lower()
    await container.stop()


def test_engine_requires_a_url() -> None:
    with pytest.raises(ValueError, match="KEELSON_DATABASE_URL"):
        create_engine(KeelsonSettings(), schema="x")


OLD_MASTER = "old-master-key-0123456789abcdef-0123456"
NEW_MASTER = "new-master-key-0123456789abcdef-0123456"
SECRETS = MetaData(schema=f"enc_{uuid.uuid4().hex[:8]}")
cards = Table(
    "cards",
    SECRETS,
    Column("id", Integer, primary_key=True),
    Column("number", EncryptedString("cards"), nullable=True),
)


@pytest.fixture
async def secrets_engine(test_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(KeelsonSettings(database_url=test_database_url), schema="public")
    async with engine.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{SECRETS.schema}"'))
        await conn.run_sync(SECRETS.create_all)
    yield engine
    async with engine.begin() as conn:
        await conn.execute(text(f'DROP SCHEMA "{SECRETS.schema}" CASCADE'))
    await engine.dispose()


async def stored(engine: AsyncEngine) -> dict[int, str | None]:
    async with engine.connect() as conn:
        rows = await conn.execute(text(f'SELECT id, number FROM "{SECRETS.schema}".cards'))
        return {row.id: row.number for row in rows}


async def test_encrypted_column_stores_ciphertext_and_reads_plaintext(
    secrets_engine: AsyncEngine,
) -> None:
    configure_field_encryption(KeyManager(OLD_MASTER))
    async with secrets_engine.begin() as conn:
        await conn.execute(
            insert(cards), [{"id": 1, "number": "4242424242424242"}, {"id": 2, "number": None}]
        )
        read = dict((await conn.execute(select(cards.c.id, cards.c.number))).all())
    assert read == {1: "4242424242424242", 2: None}
    raw = await stored(secrets_engine)
    assert raw[2] is None
    assert raw[1] and "4242" not in raw[1]
    async with secrets_engine.begin() as conn:  # same plaintext, different ciphertext
        await conn.execute(insert(cards).values(id=3, number="4242424242424242"))
    assert (await stored(secrets_engine))[3] != raw[1]

    tampered = raw[1][:-3] + ("AAA" if not raw[1].endswith("AAA") else "BBB")
    async with secrets_engine.begin() as conn:
        await conn.execute(
            text(f'UPDATE "{SECRETS.schema}".cards SET number = :v WHERE id = 1'), {"v": tampered}
        )
        with pytest.raises(DecryptionError):
            (await conn.execute(select(cards.c.number).where(cards.c.id == 1))).all()


async def test_rotation_reads_old_rows_and_reencrypts_them(secrets_engine: AsyncEngine) -> None:
    configure_field_encryption(KeyManager(OLD_MASTER))
    async with secrets_engine.begin() as conn:
        await conn.execute(insert(cards), [{"id": i, "number": f"card-{i}"} for i in range(1, 8)])
    before = await stored(secrets_engine)

    settings = KeelsonSettings(
        master_key=SecretStr(NEW_MASTER), previous_master_keys=[SecretStr(OLD_MASTER)]
    )
    configure_field_encryption(KeyManager.from_settings(settings))
    async with secrets_engine.begin() as conn:
        await conn.execute(insert(cards).values(id=8, number="card-8"))
        assert await reencrypt_column(conn, cards.c.number, batch_size=3) == 7
        assert await reencrypt_column(conn, cards.c.number) == 0
    after = await stored(secrets_engine)
    assert all(after[i] != before[i] for i in before)

    configure_field_encryption(KeyManager(NEW_MASTER))  # the old key is gone now
    async with secrets_engine.connect() as conn:
        rows = (await conn.execute(select(cards.c.id, cards.c.number))).all()
    assert dict(rows) == {i: f"card-{i}" for i in range(1, 9)}


async def test_pool_settings_reach_the_engine_and_its_metrics(test_database_url: str) -> None:
    settings = KeelsonSettings(
        service=f"pool{uuid.uuid4().hex[:6]}",
        database_url=test_database_url,
        db=DatabaseSettings(pool_size=2, max_overflow=1, pool_timeout=0.5),
    )
    engine = create_engine(settings, schema="public")
    labels = {"service": settings.service}

    def sample(name: str) -> float | None:
        return REGISTRY.get_sample_value(name, labels)

    try:
        held = [await engine.connect() for _ in range(3)]
        assert sample("db_pool_connections_in_use") == 3
        assert sample("db_pool_size") == 2
        assert sample("db_pool_overflow_connections") == 1
        with pytest.raises(exc.TimeoutError):  # pool_size + max_overflow, then pool_timeout
            await engine.connect()
        for conn in held:
            await conn.close()
        assert sample("db_pool_connections_in_use") == 0
        assert sample("db_pool_connections_idle") == 2
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        assert (sample("db_query_duration_seconds_count") or 0) >= 1
    finally:
        await engine.dispose()


async def test_the_plugin_configures_field_encryption_from_the_settings(
    test_database_url: str, secrets_engine: AsyncEngine
) -> None:
    settings = KeelsonSettings(
        service="payments",
        database_url=test_database_url,
        master_key=SecretStr(NEW_MASTER),
        log=LogSettings(ship_endpoint=None),
    )
    configure_field_encryption(KeyManager(OLD_MASTER))
    container = PluginContainer(settings)
    container.register(DatabasePlugin)
    await container.start()
    try:
        async with container.resolve(DB_ENGINE).begin() as conn:
            await conn.execute(insert(cards).values(id=1, number="written by the plugin"))
    finally:
        await container.stop()
    cipher = KeyManager(NEW_MASTER).field_cipher("cards")
    token = (await stored(secrets_engine))[1]
    assert token is not None and cipher.decrypt(token) == "written by the plugin"


async def held_elsewhere(database_url: str, lock: str | int) -> bool:
    """Whether another connection is refused `lock` (named locks by `hashtext`, ids as is)."""
    key = "hashtext($1)" if isinstance(lock, str) else "$1"
    other = await asyncpg.connect(plain_url(database_url))
    try:
        async with other.transaction():
            return not await other.fetchval(f"SELECT pg_try_advisory_xact_lock({key})", lock)
    finally:
        await other.close()


@pytest.mark.parametrize("lock", [f"keelson.test.{uuid.uuid4()}", uuid.uuid4().int >> 65])
async def test_an_advisory_lock_taken_in_a_session_lasts_until_commit(
    test_database_url: str, lock: str | int
) -> None:
    engine = create_engine(KeelsonSettings(database_url=test_database_url), schema="public")
    try:
        async with AsyncSession(engine) as session:
            await advisory_xact_lock(session, lock)
            assert await held_elsewhere(test_database_url, lock)
            await session.commit()
            assert not await held_elsewhere(test_database_url, lock)
    finally:
        await engine.dispose()


@pytest.mark.parametrize("lock", [f"keelson.test.{uuid.uuid4()}", uuid.uuid4().int >> 65])
async def test_an_advisory_lock_taken_on_an_asyncpg_connection_lasts_until_rollback(
    test_database_url: str, lock: str | int
) -> None:
    conn = await asyncpg.connect(plain_url(test_database_url))
    try:
        transaction = conn.transaction()
        await transaction.start()
        await advisory_xact_lock(conn, lock)
        assert await held_elsewhere(test_database_url, lock)
        await transaction.rollback()
        assert not await held_elsewhere(test_database_url, lock)
    finally:
        await conn.close()


async def test_database_errors_reach_the_log_without_the_values_they_refused(
    test_database_url: str,
) -> None:
    """A unique violation and a type error, as the unhandled-error path logs them."""
    import logging
    import sys

    from keelson.logging import record_to_dict

    email, password_hash = "victim@example.com", "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA"
    table = f"leaky_{uuid.uuid4().hex[:8]}"
    engine = create_engine(KeelsonSettings(database_url=test_database_url), schema="public")
    failures: list[str] = []
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f"CREATE TABLE {table} (email text UNIQUE, hash text)"))
        row = {"email": email, "hash": password_hash}
        insert_row = f"INSERT INTO {table} VALUES (:email, :hash)"
        for statement, params in (
            (insert_row, row),
            (insert_row, row),
            (f"SELECT 1 FROM {table} WHERE length(email) = :n", {"n": email}),
        ):
            try:
                async with engine.begin() as conn:
                    await conn.execute(text(statement), params)
            except exc.DBAPIError:
                record = logging.LogRecord(
                    "x", logging.ERROR, __file__, 1, "unhandled error", None, sys.exc_info()
                )
                failures.append(record_to_dict(record, "svc")["attrs"]["exception"])
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP TABLE {table}"))
    finally:
        await engine.dispose()
    assert len(failures) == 2  # the duplicate and the text compared to an integer
    assert "UniqueViolationError" in failures[0] and "DataError" in failures[1]
    for logged in failures:
        assert email not in logged and "victim" not in logged
        assert "argon2" not in logged and "aGFzaA" not in logged


async def test_readiness_answers_while_requests_hold_every_pooled_connection(
    test_database_url: str,
) -> None:
    from keelson.health import readiness

    settings = KeelsonSettings(
        service=f"busy{uuid.uuid4().hex[:6]}",
        database_url=test_database_url,
        log=LogSettings(ship_endpoint=None),
        db=DatabaseSettings(pool_size=1, max_overflow=0, pool_timeout=10),
    )
    container = PluginContainer(settings)
    container.register(DatabasePlugin)
    await container.start()
    try:
        engine = container.resolve(DB_ENGINE)
        async with engine.connect():  # request traffic holds the whole pool
            status, report = await readiness(container)
        assert status == "ready", report
    finally:
        await container.stop()


def test_migrations_wait_for_the_schema_lock_and_replicas_migrate_one_by_one(
    postgres_server_url: str,
) -> None:
    """Replicas starting at once (init containers) each migrate; the lock orders them."""
    with fresh_database(postgres_server_url, prefix="keelson_lock") as url:
        asyncio.run(_migrate_under_the_lock(url))


async def _migrate_only(url: str) -> int:
    """What an init container runs: `python -m auth_service --migrate-only`, a process each."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEELSON_")}
    env |= {"KEELSON_DATABASE_URL": url, "KEELSON_LOG__SHIP_ENDPOINT": ""}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "auth_service", "--migrate-only", env=env
    )
    return await process.wait()


async def _migrate_under_the_lock(url: str) -> None:
    lock = migration_lock("auth")
    holder = await asyncpg.connect(plain_url(url))
    try:
        await holder.execute("SELECT pg_advisory_lock(hashtext($1))", lock)
        first = asyncio.create_task(_migrate_only(url))

        async def waiting() -> bool:
            return bool(
                await holder.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                    " AND NOT granted AND pid <> pg_backend_pid()"
                )
            )

        await eventually(waiting, timeout=30, interval=0.05)
        assert await holder.fetchval("SELECT to_regclass('auth.alembic_version')") is None
        assert not first.done()
        await holder.execute("SELECT pg_advisory_unlock(hashtext($1))", lock)
        assert await asyncio.wait_for(first, 120) == 0
        # Three more at once: whichever takes the lock first finds head, so do the others.
        assert await asyncio.gather(*(_migrate_only(url) for _ in range(3))) == [0, 0, 0]
        version = await holder.fetchval("SELECT version_num FROM auth.alembic_version")
        assert version.startswith("auth_")
        held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = hashtext($1)"
        assert await holder.fetchval(held, lock) == 0
    finally:
        await holder.close()

"""Each service's schema with its own Alembic version table, on a real PostgreSQL."""

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text

from keelson.config import KeelsonSettings, LogSettings
from keelson.db import DB_SESSIONS, DatabasePlugin, async_url, create_engine, migrate
from keelson.embedded import free_port
from keelson.plugins import PluginContainer

ROOT = Path(__file__).resolve().parents[3]


def test_async_url_normalises_drivers() -> None:
    assert async_url("postgres://u:p@h:5/d") == "postgresql+asyncpg://u:p@h:5/d"
    assert async_url("postgresql://u@h/d") == "postgresql+asyncpg://u@h/d"


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
        assert [r[0] for r in rows] == ["auth", "payments"]
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

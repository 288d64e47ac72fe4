"""Async SQLAlchemy per service, bound to the service's own schema; Alembic helpers."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from fastapi import Request
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.schema import MetaData

from keelson.config import KeelsonSettings
from keelson.metrics import DB_POOL_IN_USE, DB_QUERY_SECONDS
from keelson.plugins import Health, Key, Plugin, PluginMetadata, Priority

__all__ = [
    "DB_ENGINE",
    "DB_SESSIONS",
    "DatabasePlugin",
    "async_url",
    "create_engine",
    "get_session",
    "migrate",
    "run_env",
    "run_migrations_online",
]

_log = logging.getLogger("keelson.db")

DB_ENGINE: Key[AsyncEngine] = Key("db.engine")
DB_SESSIONS: Key[async_sessionmaker[AsyncSession]] = Key("db.sessions")


def async_url(url: str) -> str:
    """Any postgres URL as one for asyncpg (`postgresql+asyncpg://`)."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def create_engine(settings: KeelsonSettings, *, schema: str) -> AsyncEngine:
    """An engine whose connections see `schema` first on the search path."""
    if settings.database_url is None:
        raise ValueError("KEELSON_DATABASE_URL is not set")
    engine = create_async_engine(
        async_url(settings.database_url),
        pool_size=settings.db.pool_size,
        max_overflow=settings.db.max_overflow,
        pool_timeout=settings.db.pool_timeout,
        pool_recycle=settings.db.pool_recycle,
        pool_pre_ping=settings.db.pool_pre_ping,
        echo=settings.db.echo,
        connect_args={
            "server_settings": {
                "search_path": f"{schema},public",
                "application_name": f"keelson-{settings.service}",
            }
        },
    )
    _instrument(engine, settings.service)
    return engine


def _instrument(engine: AsyncEngine, service: str) -> None:
    histogram = DB_QUERY_SECONDS.labels(service)
    pool_gauge = DB_POOL_IN_USE.labels(service)
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "before_cursor_execute")
    def _start(conn: Any, cursor: Any, statement: Any, params: Any, ctx: Any, many: Any) -> None:
        conn.info["keelson_t0"] = time.perf_counter()

    @event.listens_for(sync_engine, "after_cursor_execute")
    def _stop(conn: Any, cursor: Any, statement: Any, params: Any, ctx: Any, many: Any) -> None:
        started = conn.info.pop("keelson_t0", None)
        if started is not None:
            histogram.observe(time.perf_counter() - started)

    @event.listens_for(sync_engine.pool, "checkout")
    def _checkout(*_: Any) -> None:
        pool_gauge.inc()

    @event.listens_for(sync_engine.pool, "checkin")
    def _checkin(*_: Any) -> None:
        pool_gauge.dec()


class DatabasePlugin(Plugin):
    """Provides the service's engine and session factory; readiness pings the database."""

    metadata = PluginMetadata(
        name="database",
        priority=Priority.INFRASTRUCTURE,
        description="PostgreSQL through async SQLAlchemy",
    )
    schema: str = "public"

    async def initialize(self) -> None:
        schema = self.container.settings.service.replace("-", "_")
        self.engine = create_engine(self.container.settings, schema=schema)
        self.container.provide(DB_ENGINE, self.engine)
        self.container.provide(DB_SESSIONS, async_sessionmaker(self.engine, expire_on_commit=False))

    async def stop(self) -> None:
        await self.engine.dispose()

    async def health(self) -> Health:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return Health(ok=True)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """FastAPI dependency: one session per request, rolled back if the handler fails."""
    sessions = request.app.state.container.resolve(DB_SESSIONS)
    async with sessions() as session:
        yield session


def run_migrations_online(connection: Connection, *, metadata: MetaData, schema: str) -> None:
    """Called from a service's `migrations/env.py`: the schema and its own version table."""
    from alembic import context

    connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    connection.execute(text(f'SET search_path TO "{schema}", public'))
    connection.commit()
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table_schema=schema,
        include_schemas=False,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_env(*, metadata: MetaData, schema: str) -> None:
    """The whole body of a service's `migrations/env.py`."""
    import asyncio
    import os

    from alembic import context
    from sqlalchemy.pool import NullPool

    url = context.config.attributes.get("database_url") or os.environ.get("KEELSON_DATABASE_URL")
    if not url:
        raise RuntimeError("KEELSON_DATABASE_URL is not set")

    async def upgrade() -> None:
        engine = create_async_engine(async_url(url), poolclass=NullPool)
        try:
            async with engine.connect() as conn:
                await conn.run_sync(
                    lambda sync_conn: run_migrations_online(
                        sync_conn, metadata=metadata, schema=schema
                    )
                )
        finally:
            await engine.dispose()

    asyncio.run(upgrade())


def migrate(migrations_dir: Path, database_url: str, *, revision: str = "head") -> None:
    """Upgrade one service's schema to `revision` (synchronously; run it before the service)."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    config.attributes["database_url"] = async_url(database_url)
    command.upgrade(config, revision)

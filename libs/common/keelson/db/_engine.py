"""The service's async SQLAlchemy engine, bound to its own schema, as a plugin."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from keelson.config import KeelsonSettings
from keelson.db._encrypted import configure_field_encryption
from keelson.keys import KeyManager
from keelson.metrics import DB_QUERY_SECONDS, track_db_pool
from keelson.plugins import Health, Key, Plugin, PluginMetadata, Priority

__all__ = [
    "DB_ENGINE",
    "DB_SESSIONS",
    "DatabasePlugin",
    "async_url",
    "create_engine",
    "get_session",
    "plain_url",
    "schema_for",
]

_PROBE_SECONDS = 1.5  # readiness: connect and query within this, inside the 2 s health timeout

DB_ENGINE: Key[AsyncEngine] = Key("db.engine")
DB_SESSIONS: Key[async_sessionmaker[AsyncSession]] = Key("db.sessions")


def async_url(url: str) -> str:
    """Any postgres URL as one for asyncpg (`postgresql+asyncpg://`)."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def plain_url(url: str) -> str:
    """Any postgres URL as a plain `postgresql://` one, as asyncpg, psql and libpq take it."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


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
        # Statement parameters (emails, hashes) never reach an exception's text, hence no log.
        hide_parameters=True,
        connect_args={
            "server_settings": {
                "search_path": f"{schema},public",
                "application_name": f"keelson-{settings.service}",
            }
        },
    )
    _instrument(engine, settings.service)
    return engine


def schema_for(service: str) -> str:
    """The Postgres schema a service's tables live in (its name, `-` as `_`)."""
    return service.replace("-", "_")


def _instrument(engine: AsyncEngine, service: str) -> None:
    histogram = DB_QUERY_SECONDS.labels(service)
    sync_engine = engine.sync_engine
    track_db_pool(sync_engine, service)

    @event.listens_for(sync_engine, "before_cursor_execute")
    def _start(conn: Any, cursor: Any, statement: Any, params: Any, ctx: Any, many: Any) -> None:
        conn.info["keelson_t0"] = time.perf_counter()

    @event.listens_for(sync_engine, "after_cursor_execute")
    def _stop(conn: Any, cursor: Any, statement: Any, params: Any, ctx: Any, many: Any) -> None:
        started = conn.info.pop("keelson_t0", None)
        if started is not None:
            histogram.observe(time.perf_counter() - started)


class DatabasePlugin(Plugin):
    """Provides the service's engine and session factory; readiness pings the database.

    It also hands the master keys to `EncryptedString` columns.
    """

    metadata = PluginMetadata(
        name="database",
        priority=Priority.INFRASTRUCTURE,
        description="PostgreSQL through async SQLAlchemy",
    )

    async def initialize(self) -> None:
        settings = self.container.settings
        configure_field_encryption(KeyManager.from_settings(settings))
        self.engine = create_engine(settings, schema=schema_for(settings.service))
        self.container.provide(DB_ENGINE, self.engine)
        self.container.provide(DB_SESSIONS, async_sessionmaker(self.engine, expire_on_commit=False))

        # Readiness has a connection of its own: behind a pool that request traffic has
        # exhausted it would wait and fail, and the service would flap out of rotation
        # exactly when it is busy. Pre-ping replaces a connection a restart left stale.
        self.probe = create_async_engine(
            async_url(settings.database_url or ""),
            pool_size=1,
            max_overflow=0,
            pool_timeout=_PROBE_SECONDS,
            pool_pre_ping=True,
            connect_args={"timeout": _PROBE_SECONDS},
        )

    async def stop(self) -> None:
        await self.engine.dispose()
        await self.probe.dispose()

    async def health(self) -> Health:
        async with asyncio.timeout(_PROBE_SECONDS), self.probe.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return Health(ok=True)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """FastAPI dependency: one session per request, rolled back if the handler fails."""
    sessions = request.app.state.container.resolve(DB_SESSIONS)
    async with sessions() as session:
        yield session

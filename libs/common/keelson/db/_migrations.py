"""Alembic helpers: every service's migrations in its own schema with its own version table."""

from __future__ import annotations

import asyncio
import importlib.util
import os
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool
from sqlalchemy.schema import MetaData

from keelson.db._engine import async_url

__all__ = ["migrate", "migration_lock", "migrations_dir", "run_env", "run_migrations_online"]

# Alembic is imported inside each function: a running service never migrates, and the
# import (Alembic, Mako, Pygments, every SQLAlchemy dialect) costs it about 12 MB.


def migration_lock(schema: str) -> str:
    """The name of the advisory lock a schema's migrations run under (`hashtext` of it)."""
    return f"keelson.migrations.{schema}"


def run_migrations_online(connection: Connection, *, metadata: MetaData, schema: str) -> None:
    """Called from a service's `migrations/env.py`: the schema and its own version table.

    The whole upgrade runs under a session-level advisory lock named for the schema, so
    replicas that start at once (Kubernetes init containers) migrate one after another:
    the first upgrades, the others wait, then find the schema at head and do nothing.
    """
    from alembic import context

    lock = {"lock": migration_lock(schema)}
    connection.execute(text("SELECT pg_advisory_lock(hashtext(:lock))"), lock)
    connection.commit()
    try:
        quoted = connection.dialect.identifier_preparer.quote_identifier(schema)
        connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quoted}"))
        connection.execute(text(f"SET search_path TO {quoted}, public"))
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
    finally:
        connection.rollback()  # leaves a failed transaction, so that the unlock can run
        connection.execute(text("SELECT pg_advisory_unlock(hashtext(:lock))"), lock)
        connection.commit()


def run_env(*, metadata: MetaData, schema: str) -> None:
    """The whole body of a service's `migrations/env.py`."""
    from alembic import context

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


def migrations_dir(package: str) -> Path:
    """A service package's Alembic folder (`auth_service` → `.../auth_service/migrations`)."""
    # Found without importing the package, whose import may be heavy.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the {package} package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "migrations"


def migrate(migrations_dir: Path, database_url: str, *, revision: str = "head") -> None:
    """Upgrade one service's schema to `revision` (synchronously; run it before the service)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    config.attributes["database_url"] = async_url(database_url)
    command.upgrade(config, revision)

"""Async SQLAlchemy per service in its own schema, Alembic helpers, encrypted columns."""

from keelson.db._encrypted import EncryptedString, configure_field_encryption, reencrypt_column
from keelson.db._engine import (
    DB_ENGINE,
    DB_SESSIONS,
    DatabasePlugin,
    async_url,
    create_engine,
    get_session,
    plain_url,
    schema_for,
)
from keelson.db._locks import advisory_xact_lock
from keelson.db._migrations import (
    migrate,
    migration_lock,
    migrations_dir,
    run_env,
    run_migrations_online,
)
from keelson.db._outage import DATABASE_RETRY_AFTER, database_unavailable

__all__ = [
    "DATABASE_RETRY_AFTER",
    "DB_ENGINE",
    "DB_SESSIONS",
    "DatabasePlugin",
    "EncryptedString",
    "advisory_xact_lock",
    "async_url",
    "configure_field_encryption",
    "create_engine",
    "database_unavailable",
    "get_session",
    "migrate",
    "migration_lock",
    "migrations_dir",
    "plain_url",
    "reencrypt_column",
    "run_env",
    "run_migrations_online",
    "schema_for",
]

"""Users, sessions (refresh-token families), refresh and action tokens, signing keys.

Revision ID: auth_0003
Revises: auth_0002
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "auth_0003"
down_revision: str | None = "auth_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "auth"


def _timestamp(name: str, *, nullable: bool = True, default: bool = False) -> sa.Column:
    return sa.Column(
        name,
        sa.DateTime(timezone=True),
        nullable=nullable,
        server_default=sa.func.now() if default else None,
    )


def _parent(name: str, table: str) -> sa.Column:
    """A required reference to a row of `table`, deleted with it."""
    return sa.Column(
        name,
        sa.Uuid(),
        sa.ForeignKey(f"{SCHEMA}.{table}.id", ondelete="CASCADE"),
        nullable=False,
    )


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("email", sa.String(320), nullable=False, unique=True),
        sa.Column("name", sa.String(200)),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("roles", sa.ARRAY(sa.String(64)), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        _timestamp("email_verified_at"),
        _timestamp("created_at", nullable=False, default=True),
        _timestamp("updated_at", nullable=False, default=True),
        schema=SCHEMA,
    )
    op.create_index("ix_users_roles", "users", ["roles"], schema=SCHEMA, postgresql_using="gin")
    op.create_table(
        "sessions",
        sa.Column("id", sa.Uuid(), primary_key=True),
        _parent("user_id", "users"),
        sa.Column("scopes", sa.ARRAY(sa.String(64)), nullable=False),
        sa.Column("access_jti", sa.String(64)),
        _timestamp("access_expires_at"),
        _timestamp("created_at", nullable=False, default=True),
        _timestamp("revoked_at"),
        sa.Column("revoked_reason", sa.String(32)),
        sa.Column("client_ip", sa.String(64)),
        sa.Column("user_agent", sa.String(300)),
        schema=SCHEMA,
    )
    op.create_index("ix_sessions_user_id", "sessions", ["user_id"], schema=SCHEMA)
    op.create_table(
        "refresh_tokens",
        sa.Column("id", sa.Uuid(), primary_key=True),
        _parent("session_id", "sessions"),
        sa.Column("token_hash", sa.LargeBinary(32), nullable=False, unique=True),
        _timestamp("created_at", nullable=False, default=True),
        _timestamp("expires_at", nullable=False),
        _timestamp("used_at"),
        schema=SCHEMA,
    )
    op.create_index("ix_refresh_tokens_session_id", "refresh_tokens", ["session_id"], schema=SCHEMA)
    op.create_table(
        "action_tokens",
        sa.Column("id", sa.Uuid(), primary_key=True),
        _parent("user_id", "users"),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("token_hash", sa.LargeBinary(32), nullable=False, unique=True),
        _timestamp("created_at", nullable=False, default=True),
        _timestamp("expires_at", nullable=False),
        _timestamp("used_at"),
        schema=SCHEMA,
    )
    op.create_index("ix_action_tokens_user_id", "action_tokens", ["user_id"], schema=SCHEMA)
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.String(64), primary_key=True),
        sa.Column("private_pem_sealed", sa.Text(), nullable=False),
        _timestamp("created_at", nullable=False, default=True),
        _timestamp("retired_at"),
        schema=SCHEMA,
    )


def downgrade() -> None:
    for table in ("signing_keys", "action_tokens", "refresh_tokens", "sessions", "users"):
        op.drop_table(table, schema=SCHEMA)

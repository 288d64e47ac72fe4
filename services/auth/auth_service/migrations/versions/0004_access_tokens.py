"""Every live access token of a session (not only the newest), so revocation refuses all.

Revision ID: auth_0004
Revises: auth_0003
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "auth_0004"
down_revision: str | None = "auth_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "auth"


def upgrade() -> None:
    op.create_table(
        "access_tokens",
        sa.Column("jti", sa.String(64), primary_key=True),
        sa.Column(
            "session_id",
            sa.Uuid(),
            sa.ForeignKey(f"{SCHEMA}.sessions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        schema=SCHEMA,
    )
    op.create_index("ix_access_tokens_session_id", "access_tokens", ["session_id"], schema=SCHEMA)
    op.execute(
        "INSERT INTO auth.access_tokens (jti, session_id, expires_at)"
        " SELECT access_jti, id, access_expires_at FROM auth.sessions"
        " WHERE access_jti IS NOT NULL AND revoked_at IS NULL AND access_expires_at > now()"
    )
    op.drop_column("sessions", "access_jti", schema=SCHEMA)
    op.drop_column("sessions", "access_expires_at", schema=SCHEMA)


def downgrade() -> None:
    op.add_column("sessions", sa.Column("access_jti", sa.String(64)), schema=SCHEMA)
    op.add_column(
        "sessions", sa.Column("access_expires_at", sa.DateTime(timezone=True)), schema=SCHEMA
    )
    op.execute(
        "UPDATE auth.sessions s SET access_jti = a.jti, access_expires_at = a.expires_at"
        " FROM (SELECT DISTINCT ON (session_id) * FROM auth.access_tokens"
        " ORDER BY session_id, expires_at DESC) a WHERE a.session_id = s.id"
    )
    op.drop_table("access_tokens", schema=SCHEMA)

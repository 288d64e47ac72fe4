"""Notifications with their attempts, webhook endpoints, preferences and contacts.

Revision ID: notifications_0003
Revises: notifications_0002
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "notifications_0003"
down_revision: str | None = "notifications_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "notifications"


def _timestamp(name: str, *, nullable: bool = True, default: bool = False) -> sa.Column:
    return sa.Column(
        name,
        sa.DateTime(timezone=True),
        nullable=nullable,
        server_default=sa.func.now() if default else None,
    )


def upgrade() -> None:
    op.create_table(
        "notifications",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("owner_id", sa.String(64)),
        sa.Column("requested_by", sa.String(200), nullable=False),
        sa.Column("idempotency_key", sa.String(200)),
        sa.Column("source_event_id", sa.String(64)),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("recipient", sa.String(512), nullable=False),
        sa.Column("webhook_endpoint_id", sa.Uuid()),
        sa.Column("template", sa.String(64)),
        sa.Column("subject", sa.Text()),
        sa.Column("body", sa.Text()),
        sa.Column("data", JSONB(), nullable=False),
        sa.Column("locale", sa.String(16), nullable=False),
        sa.Column("category", sa.String(32), nullable=False),
        sa.Column("transactional", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _timestamp("next_attempt_at", nullable=False, default=True),
        _timestamp("lease_until"),
        sa.Column("last_error", sa.Text()),
        _timestamp("created_at", nullable=False, default=True),
        _timestamp("updated_at", nullable=False, default=True),
        _timestamp("sent_at"),
        sa.UniqueConstraint("requested_by", "idempotency_key", name="uq_notifications_idempotency"),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_notifications_due",
        "notifications",
        ["next_attempt_at"],
        schema=SCHEMA,
        postgresql_where=sa.text("status IN ('pending', 'sending')"),
    )
    op.create_index("ix_notifications_owner", "notifications", ["owner_id", "id"], schema=SCHEMA)
    op.create_index(
        "ix_notifications_dead",
        "notifications",
        ["id"],
        schema=SCHEMA,
        postgresql_where=sa.text("status = 'dead_letter'"),
    )
    op.create_table(
        "attempts",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column(
            "notification_id",
            sa.Uuid(),
            sa.ForeignKey(f"{SCHEMA}.notifications.id", ondelete="CASCADE"),
            nullable=False,
        ),
        _timestamp("attempted_at", nullable=False, default=True),
        sa.Column("outcome", sa.String(24), nullable=False),
        sa.Column("response_code", sa.Integer()),
        sa.Column("error", sa.Text()),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_notifications_attempts_notification_id",
        "attempts",
        ["notification_id"],
        schema=SCHEMA,
    )
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("owner_id", sa.String(64), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("description", sa.String(200)),
        sa.Column("secret", sa.Text(), nullable=False),
        _timestamp("created_at", nullable=False, default=True),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_notifications_webhook_endpoints_owner_id",
        "webhook_endpoints",
        ["owner_id"],
        schema=SCHEMA,
    )
    op.create_table(
        "preferences",
        sa.Column("user_id", sa.String(64), primary_key=True),
        sa.Column("muted_channels", JSONB(), nullable=False),
        sa.Column("muted_categories", JSONB(), nullable=False),
        sa.Column("locale", sa.String(16)),
        _timestamp("updated_at", nullable=False, default=True),
        schema=SCHEMA,
    )
    op.create_table(
        "contacts",
        sa.Column("user_id", sa.String(64), primary_key=True),
        sa.Column("email", sa.String(320)),
        sa.Column("phone", sa.String(32)),
        _timestamp("updated_at", nullable=False, default=True),
        schema=SCHEMA,
    )


def downgrade() -> None:
    for table in ("contacts", "preferences", "webhook_endpoints", "attempts", "notifications"):
        op.drop_table(table, schema=SCHEMA)

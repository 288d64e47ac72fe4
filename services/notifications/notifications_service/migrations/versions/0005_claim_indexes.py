"""The due index split in two, so that the claim reads each in order without a sort.

`ix_notifications_due` held pending and sending rows together, so a claim read past the
rows in flight and Postgres, with a stale row estimate, chose to read every due row and
sort them for each batch. Pending rows by when they are due, leased rows by when their
lease runs out: each arm of the claim is a range scan that stops at its limit.

Revision ID: notifications_0005
Revises: notifications_0004
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "notifications_0005"
down_revision: str | None = "notifications_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "notifications"


def upgrade() -> None:
    op.create_index(
        "ix_notifications_pending",
        "notifications",
        ["next_attempt_at"],
        schema=SCHEMA,
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "ix_notifications_leased",
        "notifications",
        ["lease_until"],
        schema=SCHEMA,
        postgresql_where=sa.text("status = 'sending'"),
    )
    op.drop_index("ix_notifications_due", "notifications", schema=SCHEMA)


def downgrade() -> None:
    op.create_index(
        "ix_notifications_due",
        "notifications",
        ["next_attempt_at"],
        schema=SCHEMA,
        postgresql_where=sa.text("status IN ('pending', 'sending')"),
    )
    op.drop_index("ix_notifications_leased", "notifications", schema=SCHEMA)
    op.drop_index("ix_notifications_pending", "notifications", schema=SCHEMA)

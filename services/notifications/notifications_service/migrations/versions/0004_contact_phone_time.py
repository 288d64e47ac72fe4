"""When a contact's phone was last set by auth, so that changes arriving late lose.

Revision ID: notifications_0004
Revises: notifications_0003
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "notifications_0004"
down_revision: str | None = "notifications_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "notifications"


def upgrade() -> None:
    op.add_column(
        "contacts", sa.Column("phone_changed_at", sa.DateTime(timezone=True)), schema=SCHEMA
    )


def downgrade() -> None:
    op.drop_column("contacts", "phone_changed_at", schema=SCHEMA)

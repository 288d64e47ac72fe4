"""The user's own phone number (E.164), optional.

Revision ID: auth_0006
Revises: auth_0005
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "auth_0006"
down_revision: str | None = "auth_0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "auth"


def upgrade() -> None:
    op.add_column("users", sa.Column("phone", sa.String(16)), schema=SCHEMA)


def downgrade() -> None:
    op.drop_column("users", "phone", schema=SCHEMA)

"""The sealed successor pair of a spent refresh token, for the reuse grace window.

Revision ID: auth_0005
Revises: auth_0004
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "auth_0005"
down_revision: str | None = "auth_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "auth"


def upgrade() -> None:
    op.add_column("refresh_tokens", sa.Column("successor_sealed", sa.Text()), schema=SCHEMA)


def downgrade() -> None:
    op.drop_column("refresh_tokens", "successor_sealed", schema=SCHEMA)

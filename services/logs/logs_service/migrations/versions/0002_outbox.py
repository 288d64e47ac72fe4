"""The transactional outbox and processed-events tables (keelson.outbox).

Revision ID: logs_0002
Revises: logs_0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from keelson.outbox import create_outbox_tables, drop_outbox_tables
from logs_service.models import SCHEMA

revision: str = "logs_0002"
down_revision: str | None = "logs_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_outbox_tables(SCHEMA)


def downgrade() -> None:
    drop_outbox_tables(SCHEMA)

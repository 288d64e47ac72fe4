"""The records table, partitioned by day, with the indexes the query API uses.

Revision ID: logs_0003
Revises: logs_0002
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op

revision: str = "logs_0003"
down_revision: str | None = "logs_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE logs.records (
            id uuid NOT NULL,
            ts timestamptz NOT NULL,
            service text NOT NULL,
            level smallint NOT NULL,
            logger text NOT NULL,
            message text NOT NULL,
            request_id text,
            trace_id text,
            user_id text,
            attrs jsonb NOT NULL DEFAULT '{}'::jsonb,
            CONSTRAINT records_pkey PRIMARY KEY (ts, id)
        ) PARTITION BY RANGE (ts)
        """
    )
    op.execute("CREATE INDEX records_service_ts ON logs.records (service, ts DESC)")
    op.execute("CREATE INDEX records_level_ts ON logs.records (level, ts DESC)")
    op.execute(
        "CREATE INDEX records_request_id ON logs.records (request_id) WHERE request_id IS NOT NULL"
    )
    op.execute(
        "CREATE INDEX records_user_id_ts ON logs.records (user_id, ts DESC) "
        "WHERE user_id IS NOT NULL"
    )
    op.execute(
        "CREATE INDEX records_message_fts ON logs.records "
        "USING gin (to_tsvector('simple', message))"
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS logs.records CASCADE")

"""Customers, intents, refunds, the append-only ledger and the sandbox provider's table.

Revision ID: payments_0003
Revises: payments_0002
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from keelson.payment import create_sandbox_tables, drop_sandbox_tables
from payments_service.models import SCHEMA

revision: str = "payments_0003"
down_revision: str | None = "payments_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NOW = sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "customers",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("provider_id", sa.String(255), nullable=False, unique=True),
        sa.Column("email", sa.String(320)),
        sa.Column("livemode", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.UniqueConstraint("user_id", "provider", name="uq_customers_user"),
        schema=SCHEMA,
    )
    op.create_table(
        "intents",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("seq", sa.BigInteger(), sa.Identity(), nullable=False, unique=True),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("provider_id", sa.String(255), nullable=False, unique=True),
        sa.Column("customer_provider_id", sa.String(255)),
        sa.Column("client_secret", sa.String(300)),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("description", sa.String(500)),
        sa.Column("metadata", JSONB(), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("amount_received", sa.BigInteger(), nullable=False),
        sa.Column("amount_refunded", sa.BigInteger(), nullable=False),
        sa.Column("livemode", sa.Boolean(), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("last_event_at", sa.BigInteger()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.UniqueConstraint("user_id", "idempotency_key", name="uq_intents_idempotency"),
        sa.CheckConstraint("amount > 0", name="ck_intents_amount"),
        sa.CheckConstraint(
            "amount_refunded >= 0 AND amount_refunded <= amount_received",
            name="ck_intents_refunded",
        ),
        schema=SCHEMA,
    )
    op.create_index("ix_intents_user_seq", "intents", ["user_id", "seq"], schema=SCHEMA)
    op.create_index("ix_intents_status_seq", "intents", ["status", "seq"], schema=SCHEMA)
    op.create_table(
        "refunds",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("intent_id", sa.Uuid(), sa.ForeignKey(f"{SCHEMA}.intents.id"), nullable=False),
        sa.Column("provider_id", sa.String(255), nullable=False, unique=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(32)),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.UniqueConstraint("intent_id", "idempotency_key", name="uq_refunds_idempotency"),
        sa.CheckConstraint("amount > 0", name="ck_refunds_amount"),
        schema=SCHEMA,
    )
    op.create_table(
        "ledger",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("intent_id", sa.Uuid(), sa.ForeignKey(f"{SCHEMA}.intents.id"), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("from_status", sa.String(32)),
        sa.Column("to_status", sa.String(32)),
        sa.Column("amount", sa.BigInteger()),
        sa.Column("provider_event_id", sa.String(255)),
        sa.Column("data", JSONB(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        schema=SCHEMA,
    )
    op.create_index("ix_ledger_intent", "ledger", ["intent_id", "id"], schema=SCHEMA)
    # Append-only: a row once written is evidence, so no role may change or remove it.
    op.execute(
        f"""
        CREATE FUNCTION {SCHEMA}.ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'the payments ledger is append-only';
        END $$
        """
    )
    op.execute(
        f"""
        CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE OR TRUNCATE
            ON {SCHEMA}.ledger FOR EACH STATEMENT EXECUTE FUNCTION {SCHEMA}.ledger_append_only()
        """
    )
    create_sandbox_tables(SCHEMA)


def downgrade() -> None:
    drop_sandbox_tables(SCHEMA)
    op.execute(f"DROP TRIGGER ledger_append_only ON {SCHEMA}.ledger")
    op.execute(f"DROP FUNCTION {SCHEMA}.ledger_append_only()")
    op.drop_table("ledger", schema=SCHEMA)
    op.drop_table("refunds", schema=SCHEMA)
    op.drop_table("intents", schema=SCHEMA)
    op.drop_table("customers", schema=SCHEMA)

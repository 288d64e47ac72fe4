"""The ledger is append-only: the database itself refuses to change or remove a row."""

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE payments.ledger SET kind = 'forged'",
        "DELETE FROM payments.ledger",
        "TRUNCATE payments.ledger CASCADE",
    ],
)
async def test_ledger_rows_cannot_change(payments_engine: AsyncEngine, statement: str) -> None:
    with pytest.raises(DBAPIError, match="append-only"):
        async with payments_engine.begin() as conn:
            await conn.execute(text(statement))

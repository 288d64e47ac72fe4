"""Tables of the payments service, all in its own `payments` schema."""

from __future__ import annotations

from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

__all__ = ["SCHEMA", "Base"]

SCHEMA = "payments"


class Base(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)

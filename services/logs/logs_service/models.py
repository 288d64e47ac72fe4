"""Tables of the logs service, all in its own `logs` schema."""

from __future__ import annotations

from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

__all__ = ["SCHEMA", "Base"]

SCHEMA = "logs"


class Base(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)

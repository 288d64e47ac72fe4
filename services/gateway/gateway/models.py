"""Tables of the gateway service, all in its own `gateway` schema."""

from __future__ import annotations

from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

__all__ = ["SCHEMA", "Base"]

SCHEMA = "gateway"


class Base(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)

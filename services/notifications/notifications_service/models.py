"""Tables of the notifications service, all in its own `notifications` schema."""

from __future__ import annotations

from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

__all__ = ["SCHEMA", "Base"]

SCHEMA = "notifications"


class Base(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)

"""What the logs API returns."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, PlainSerializer

from logs_service.records import LEVELS, LogRow, row_to_dict, timestamp

__all__ = ["Level", "LevelCountPublic", "LogPage", "LogRecordPublic", "LogStats", "Timestamp"]

# Written as `timestamp` writes it, whatever pydantic would.
Timestamp = Annotated[datetime, PlainSerializer(timestamp, return_type=str, when_used="json")]


class Level(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"

    @property
    def number(self) -> int:
        return LEVELS[self.value]

    @classmethod
    def _missing_(cls, value: object) -> Level | None:
        """`?level=error` works as well as `?level=ERROR`."""
        return cls.__members__.get(value.upper()) if isinstance(value, str) else None


class LogRecordPublic(BaseModel):
    id: str
    ts: Timestamp
    service: str
    level: str
    logger: str
    message: str
    request_id: str | None
    trace_id: str | None
    user_id: str | None
    attrs: dict[str, Any]

    @classmethod
    def from_row(cls, row: LogRow) -> LogRecordPublic:
        return cls.model_validate(row_to_dict(row))


class LogPage(BaseModel):
    items: list[LogRecordPublic]
    next_cursor: str | None


class LevelCountPublic(BaseModel):
    service: str
    level: str
    count: int


class LogStats(BaseModel):
    since: datetime
    until: datetime | None
    total: int
    by_service: dict[str, int]
    by_level: dict[str, int]
    counts: list[LevelCountPublic]

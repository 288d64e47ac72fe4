"""Bounded input types for request bodies and query parameters.

Text that PostgreSQL cannot store (NUL) or that forges log lines and headers (the other
control characters) is refused at the edge with 422, instead of failing deep inside as a
500. Times are kept to what Python and PostgreSQL can both hold once converted to UTC (a
year-1 date at +14:00 overflows), and offsets to what a query can skip in reasonable time.

    class RegisterRequest(BaseModel):
        email: SingleLine = Field(max_length=320)

    async def list_logs(q: Annotated[SingleLine | None, Query(max_length=256)] = None): ...
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator

__all__ = [
    "MAX_OFFSET",
    "BoundedDatetime",
    "MultiLine",
    "SingleLine",
    "check_multi_line",
    "check_single_line",
]

# C0 controls, DEL and C1 controls; MultiLine lets tab, line feed and carriage return pass.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_WHITESPACE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(9999, 1, 1, tzinfo=UTC)
MAX_OFFSET = 1_000_000


def check_single_line(value: str) -> str:
    """`value`, unless it holds a control character (line breaks included)."""
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


def check_multi_line(value: str) -> str:
    """`value`, unless it holds a control character other than tab, CR or LF."""
    if _CONTROL_BUT_WHITESPACE.search(value):
        raise ValueError("must not contain control characters other than tab and line breaks")
    return value


def _check_datetime(value: datetime) -> datetime:
    """In UTC (a value without an offset is taken as UTC), between 1970 and 9999."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        value = value.astimezone(UTC)
    except OverflowError:
        raise ValueError("must lie between 1970 and 9999") from None
    if not _EARLIEST <= value < _LATEST:
        raise ValueError("must lie between 1970 and 9999")
    return value


SingleLine = Annotated[str, AfterValidator(check_single_line)]
MultiLine = Annotated[str, AfterValidator(check_multi_line)]
BoundedDatetime = Annotated[datetime, AfterValidator(_check_datetime)]

"""The console handler: one JSON or text line per record on a stream (stderr)."""

from __future__ import annotations

import logging
from typing import Any, TextIO

from keelson.logging._format import JsonFormatter, TextFormatter

__all__ = ["ConsoleHandler"]


class ConsoleHandler(logging.StreamHandler[TextIO]):
    """A `StreamHandler` that also writes records given as fields (`log_access_record`)."""

    @property
    def service(self) -> str:
        formatter = self.formatter
        assert isinstance(formatter, JsonFormatter | TextFormatter)
        return formatter.service

    def accepts_fields(self) -> bool:
        """Whether `emit_fields` writes what `emit` would: only our own formatters know fields."""
        return type(self.formatter) in (JsonFormatter, TextFormatter) and not self.filters

    def emit_fields(self, data: dict[str, Any], msecs: float) -> None:
        formatter = self.formatter
        assert isinstance(formatter, JsonFormatter | TextFormatter)
        self.write_line(formatter.format_fields(data, msecs))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write_line(self.format(record))
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def write_line(self, line: str) -> None:
        self.stream.write(line + self.terminator)
        self.flush()

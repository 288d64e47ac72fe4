"""The console handler: JSON or text lines on stderr, written once per event-loop tick."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, TextIO

from keelson.logging._fork import register_at_fork
from keelson.logging._format import JsonFormatter, TextFormatter

__all__ = ["ConsoleHandler"]

_MAX_PENDING = 512  # lines held before a write even inside a tick
# The formatters that know records as fields. A tuple built once: `A | B` in a function
# builds a union object on every call.
_FIELD_FORMATTERS = (JsonFormatter, TextFormatter)


class ConsoleHandler(logging.StreamHandler[TextIO]):
    """A `StreamHandler` that batches writes and also takes records as fields.

    On a thread running an event loop, lines wait for the end of the loop's current tick
    and go out in one write: at saturation a tick ends many requests, and one write per
    record was a system call each. Elsewhere, at ERROR and above, and past `_MAX_PENDING`
    lines, they go out at once. Order is kept: every line passes through the same list.
    `flush` and `close` (which `logging.shutdown` calls at exit) write what is pending,
    and so does a fork, or the child would write its parent's lines again.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._tick: asyncio.AbstractEventLoop | None = None  # its end-of-tick flush is due
        register_at_fork(before=self.flush)

    @property
    def service(self) -> str:
        formatter = self.formatter
        assert isinstance(formatter, _FIELD_FORMATTERS)
        return formatter.service

    def accepts_fields(self) -> bool:
        """Whether `emit_fields` writes what `emit` would: only our own formatters know fields."""
        return type(self.formatter) in _FIELD_FORMATTERS and not self.filters

    def emit_fields(self, data: dict[str, Any], msecs: float, levelno: int) -> None:
        """`emit` for a record already in its `record_to_dict` form, at level `levelno`."""
        formatter = self.formatter
        assert isinstance(formatter, _FIELD_FORMATTERS)
        self.write_line(formatter.format_fields(data, msecs), levelno >= logging.ERROR)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            urgent = record.levelno >= logging.ERROR or record.exc_info is not None
            self.write_line(self.format(record), urgent)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def write_line(self, line: str, urgent: bool = False) -> None:
        """Write one line now or at the end of this tick; called with the handler's lock held."""
        # None off a loop's thread (get_running_loop would raise, which costs a microsecond)
        loop = None if urgent else asyncio._get_running_loop()
        if loop is None:
            if self._pending:
                self._write_pending()
            self.stream.write(line + self.terminator)
            super().flush()
            return
        self._pending.append(line + self.terminator)
        if len(self._pending) >= _MAX_PENDING:
            self.flush()
        elif self._tick is not loop:  # a loop that stopped with our flush due is not waited on
            self._tick = loop
            loop.call_soon(self._end_of_tick)

    def _end_of_tick(self) -> None:
        self.acquire()
        try:
            self._tick = None
            self.flush()
        except Exception:
            self.handleError(logging.makeLogRecord({"msg": "console write failed"}))
        finally:
            self.release()

    def flush(self) -> None:
        self.acquire()
        try:
            if self._pending and self.stream:
                self._write_pending()
            super().flush()
        finally:
            self.release()

    def _write_pending(self) -> None:
        # Taken first: a stream that fails loses these lines, not every later one.
        lines, self._pending = "".join(self._pending), []
        self.stream.write(lines)

    def setStream(self, stream: TextIO) -> TextIO | None:
        self.flush()  # pending lines belong to the old stream
        return super().setStream(stream)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            super().close()

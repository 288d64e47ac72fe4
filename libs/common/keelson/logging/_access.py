"""Access records: one per request, written to keelson.logging's handlers without a LogRecord.

`log_access_record` produces the record `logger.log` would, field for field (the same
`record_to_dict` form, JSON line and shipped dict), at a fraction of the cost: no
LogRecord, no `%` message built twice, and the method, route and client address (which repeat
from request to request) redacted once and cached.
It takes this path only when every handler that would see the record is one of
keelson.logging's own (the console handler with our formatters, the shipper) and the logger
has no filters; otherwise (pytest's caplog, a foreign handler) it calls `logger.log`.
"""

from __future__ import annotations

import logging
import time
from functools import lru_cache
from typing import Any, NamedTuple

from keelson.logging._console import ConsoleHandler
from keelson.logging._context import current_context
from keelson.logging._format import LOGRECORD_ATTRS, STANDARD_ATTRS, bound_fields
from keelson.logging._redact import is_quiet_head, redact_text, redact_value
from keelson.logging._shipper import LogShipper

__all__ = ["ACCESS_MESSAGE", "log_access_record"]

# The status and duration after `METHOD route`: one template per request line is made of it.
_TAIL = " %d %.1fms"
ACCESS_MESSAGE = "%s %s" + _TAIL
# `extra=` may not name these: `Logger.makeRecord` refuses them with KeyError.
_RESERVED = LOGRECORD_ATTRS | {"message", "asctime"}
_Sink = ConsoleHandler | LogShipper
# Exact types: a subclass may override `emit`, which this path would bypass.
_SINK_TYPES = (ConsoleHandler, LogShipper)


@lru_cache(maxsize=1024)
def _redact_address(text: str) -> str:
    """Client addresses repeat from one request to the next."""
    return redact_text(text)


def log_access_record(
    logger: logging.Logger,
    level: int,
    method: str,
    route: str,
    status: int,
    seconds: float,
    client_ip: str | None = None,
    /,
    **fields: Any,
) -> None:
    """Log `METHOD route status duration` with those as attrs, plus `fields` (redacted).

    Equal to `logger.log(level, ACCESS_MESSAGE, method, route, status, ms, extra={"method":
    method, "route": route, "status": status, "duration_ms": round(ms, 3), "client_ip":
    client_ip, **fields})` with ms = seconds * 1000.
    """
    if not logger.isEnabledFor(level):
        return
    sinks = _field_sinks(logger, level)
    ms = seconds * 1000
    if sinks is None:
        logger.log(
            level,
            ACCESS_MESSAGE,
            method,
            route,
            status,
            ms,
            extra={
                # A foreign handler (pytest's caplog, say) sees the bound ids on the record
                # itself, as keelson's own handlers see them on the line they write.
                **{k: v for k, v in current_context().items() if v is not None},
                "method": method,
                "route": route,
                "status": status,
                "duration_ms": round(ms, 3),
                "client_ip": client_ip,
                **fields,
            },
            stacklevel=2,
        )
        return
    ts = time.time()
    line = _request_line(method, route)
    attrs = {
        "method": line.method,
        "route": line.route,
        "status": status,
        "duration_ms": round(ms, 3),
        "client_ip": None if client_ip is None else _redact_address(client_ip),
    }
    for key, value in fields.items():
        if key in _RESERVED:
            raise KeyError(f"Attempt to overwrite {key!r} in LogRecord")
        if key not in STANDARD_ATTRS and not key.startswith("_"):
            attrs[key] = redact_value(key, value)
    message = line.message(status, ms)
    data = bound_fields(
        ts,
        sinks[0].service,
        logging.getLevelName(level),
        logger.name,
        message,
        attrs,
        message_redacted=True,
        ids_in_attrs=bool(fields),  # the five above are none of them
    )
    msecs = int((ts - int(ts)) * 1000) + 0.0  # as LogRecord computes it
    for sink in sinks:
        sink.acquire()
        try:
            sink.emit_fields(data, msecs, level)
        except Exception:
            sink.handleError(logger.makeRecord(logger.name, level, "", 0, message, (), None))
        finally:
            sink.release()


class _RequestLine(NamedTuple):
    """What an access record needs of a method and route, redacted; they repeat."""

    method: str
    route: str
    template: str  # ACCESS_MESSAGE with the method and route in place, not redacted
    quiet: bool  # `is_quiet_head` of the message's `METHOD route`
    short: int  # a message this long or longer may need scanning: its tail is 13+ long

    def message(self, status: int, ms: float) -> str:
        """`redact_text(ACCESS_MESSAGE % ...)`, scanned only when the head may need it."""
        text = self.template % (status, ms)  # a third faster than an f-string
        if self.quiet and len(text) < self.short:
            return text
        return redact_text(text)


@lru_cache(maxsize=1024)
def _request_line(method: str, route: str) -> _RequestLine:
    head = f"{method} {route}"
    return _RequestLine(
        redact_text(method),
        redact_text(route),
        head.replace("%", "%%") + _TAIL,
        is_quiet_head(head),
        len(head) + 1 + 13,
    )


def _field_sinks(logger: logging.Logger, level: int) -> list[_Sink] | None:
    """The handlers `Logger.callHandlers` would call, or None unless all take fields."""
    if logger.filters:
        return None
    sinks: list[_Sink] = []
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if level < handler.level:
                continue
            if type(handler) not in _SINK_TYPES:
                return None
            sink: _Sink = handler  # type: ignore[assignment]
            if not sink.accepts_fields():
                return None
            sinks.append(sink)
        current = current.parent if current.propagate else None
    return sinks or None  # none at all: `logging.lastResort` decides

"""Log records as dicts (the wire format to the log service), JSON and coloured text."""

from __future__ import annotations

import itertools
import logging
import os
import sys
import time
from typing import Any

import orjson

from keelson.logging._context import request_id_var, trace_id_var, user_id_var
from keelson.logging._redact import redact_text, redact_value

__all__ = [
    "LOGRECORD_ATTRS",
    "STANDARD_ATTRS",
    "JsonFormatter",
    "TextFormatter",
    "bound_fields",
    "record_to_dict",
]

# Attributes every LogRecord has; anything else came from `extra=` and goes to attrs.
LOGRECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None)))
STANDARD_ATTRS = LOGRECORD_ATTRS | {"message", "asctime", "taskName", "keelson", "color_message"}
_COLOURS = ("\x1b[36m", "\x1b[32m", "\x1b[35m", "\x1b[33m", "\x1b[34m", "\x1b[96m", "\x1b[92m")
_LEVEL_COLOURS = {
    "DEBUG": "\x1b[2m",
    "WARNING": "\x1b[33m",
    "ERROR": "\x1b[31m",
    "CRITICAL": "\x1b[1;31m",
}
_RESET = "\x1b[0m"
# A JSON line's `.mmmZ`, by whole milliseconds: indexing costs a fifth of formatting.
_MILLIS = tuple(f".{n:03d}Z" for n in range(1000))


class _RecordIds:
    """Record ids: 64 random bits per process, then a counter; cheaper than uuid4 per record.

    A forked child draws a new prefix, or its ids would repeat its parent's.
    """

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.counter = itertools.count()

    def new(self) -> str:
        return self.prefix + next(self.counter).to_bytes(8).hex()


_record_ids = _RecordIds()
_CONTEXT_FIELDS = ("request_id", "trace_id", "user_id")


def record_to_dict(record: logging.LogRecord, service: str) -> dict[str, Any]:
    """The redacted, context-bound form of a record; computed once and cached on it."""
    fields = record.__dict__
    cached: dict[str, Any] | None = fields.get("keelson")
    if cached is not None:
        return cached
    if fields.keys() <= STANDARD_ATTRS:
        attrs: dict[str, Any] = {}
    else:
        attrs = {
            key: redact_value(key, value)
            for key, value in fields.items()
            if key not in STANDARD_ATTRS and not key.startswith("_")
        }
    if record.exc_info:
        attrs["exception"] = redact_text(logging.Formatter().formatException(record.exc_info))
    out = bound_fields(
        record.created, service, record.levelname, record.name, record.getMessage(), attrs
    )
    record.keelson = out
    return out


def bound_fields(
    ts: float,
    service: str,
    level: str,
    logger: str,
    message: str,
    attrs: dict[str, Any],
    *,
    message_redacted: bool = False,
    ids_in_attrs: bool = True,
) -> dict[str, Any]:
    """A record's dict from its parts: `message` is redacted here unless it already is;
    `attrs` must already be. `ids_in_attrs=False`: the caller knows `attrs` names none of
    the context fields, so they are not looked for."""
    ids = _record_ids
    out: dict[str, Any] = {
        "id": ids.prefix + next(ids.counter).to_bytes(8).hex(),  # `ids.new()`, one call less
        "ts": ts,
        "service": service,
        "level": level,
        "logger": logger,
        "message": message if message_redacted else redact_text(message),
        "request_id": request_id_var.get(),
        "trace_id": trace_id_var.get(),
        "user_id": user_id_var.get(),
        "attrs": attrs,
    }
    if attrs and ids_in_attrs:  # ids given as extras win over the bound context
        for name in _CONTEXT_FIELDS:
            value = attrs.pop(name, None)
            if value:
                out[name] = value
    return out


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service
        self._stamp: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        return self.format_fields(record_to_dict(record, self.service), record.msecs)

    def format_fields(self, fields: dict[str, Any], msecs: float) -> str:
        """The line of a record already in its `record_to_dict` form; `msecs` as on LogRecord."""
        data = fields.copy()
        second = int(data["ts"])
        stamp = self._stamp
        if stamp[0] != second:  # one strftime a second, not one a record; one tuple, no race
            stamp = self._stamp = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        millis = int(msecs)
        data["ts"] = stamp[1] + (_MILLIS[millis] if 0 <= millis < 1000 else f".{millis:03d}Z")
        return orjson.dumps(data, default=str).decode()


def _colour_wanted() -> bool:
    """NO_COLOR / FORCE_COLOR (no-color.org), else whether stderr is a terminal.

    Under `keelson up` stderr is supervisord's pipe, so it sets FORCE_COLOR on a terminal.
    """
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    return sys.stderr.isatty()


class TextFormatter(logging.Formatter):
    """`[service] HH:MM:SS LEVEL logger: message key=value`, coloured on a terminal."""

    def __init__(self, service: str, colour: bool | None = None) -> None:
        super().__init__()
        self.service = service
        self.colour = _colour_wanted() if colour is None else colour
        self._tag = self._paint(f"[{service}]", _COLOURS[sum(service.encode()) % len(_COLOURS)])

    def _paint(self, text: str, colour: str | None) -> str:
        return f"{colour}{text}{_RESET}" if self.colour and colour else text

    def format(self, record: logging.LogRecord) -> str:
        return self.format_fields(record_to_dict(record, self.service), record.msecs)

    def format_fields(self, data: dict[str, Any], msecs: float = 0.0) -> str:
        """The line of a record already in its `record_to_dict` form."""
        clock = time.strftime("%H:%M:%S", time.localtime(data["ts"]))
        level = self._paint(f"{data['level']:<7}", _LEVEL_COLOURS.get(data["level"]))
        extras = {k: data[k] for k in ("request_id", "user_id") if data[k]}
        extras.update({k: v for k, v in data["attrs"].items() if k != "exception"})
        tail = " ".join(f"{k}={v}" for k, v in extras.items())
        line = f"{self._tag} {clock} {level} {data['logger']}: {data['message']}"
        if tail:
            line += " " + self._paint(tail, "\x1b[2m")
        if "exception" in data["attrs"]:
            line += "\n" + data["attrs"]["exception"]
        return line

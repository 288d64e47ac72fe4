"""Structured logging: bound context, redaction, JSON or text, shipping to the log service."""

from __future__ import annotations

import logging
import sys

from keelson.config import KeelsonSettings, LogFormat
from keelson.logging._access import log_access_record
from keelson.logging._console import ConsoleHandler
from keelson.logging._context import (
    bind,
    current_context,
    request_id_var,
    trace_id_var,
    user_id_var,
)
from keelson.logging._format import JsonFormatter, TextFormatter, record_to_dict
from keelson.logging._intake import (
    CurveKeyPair,
    SenderCredentials,
    intake_server_keys,
    sender_keys,
    senders_by_public_key,
)
from keelson.logging._redact import REDACTED, redact_text, redact_value
from keelson.logging._shipper import WIRE_ACK, WIRE_VERSION, LogShipper, ShipperStats

__all__ = [
    "REDACTED",
    "WIRE_ACK",
    "WIRE_VERSION",
    "ConsoleHandler",
    "CurveKeyPair",
    "JsonFormatter",
    "LogShipper",
    "SenderCredentials",
    "ShipperStats",
    "TextFormatter",
    "bind",
    "close_shippers",
    "configure_logging",
    "current_context",
    "get_logger",
    "intake_server_keys",
    "log_access_record",
    "record_to_dict",
    "redact_text",
    "redact_value",
    "request_id_var",
    "sender_keys",
    "senders_by_public_key",
    "trace_id_var",
    "user_id_var",
]

_QUIET = ("uvicorn.access", "asyncio", "aiosqlite", "httpx", "httpcore", "alembic.runtime")


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)


def configure_logging(settings: KeelsonSettings, *, ship: bool = True) -> None:
    """Install the console handler and, when configured, the ZeroMQ shipper on the root logger."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    console = ConsoleHandler(sys.stderr)
    if settings.log_format is LogFormat.JSON:
        console.setFormatter(JsonFormatter(settings.service))
    else:
        console.setFormatter(TextFormatter(settings.service))
    root.addHandler(console)
    if ship and settings.log.ship_endpoint:
        root.addHandler(LogShipper.from_settings(settings))
    root.setLevel(settings.log.level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)


def close_shippers() -> None:
    """Close the root logger's shippers: deliver within their close timeout, spill the rest.

    Called by the app's lifespan at shutdown, while the process still runs: uvicorn
    re-raises SIGTERM once it has shut down, and a process ended by a signal runs no
    interpreter-exit cleanup. Records logged afterwards go straight to the spill.
    """
    for handler in logging.getLogger().handlers:
        if isinstance(handler, LogShipper):
            handler.close()

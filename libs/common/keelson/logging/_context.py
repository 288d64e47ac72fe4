"""Context bound to every log record: request id, trace id, user."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["bind", "current_context", "request_id_var", "trace_id_var", "user_id_var"]

request_id_var: ContextVar[str | None] = ContextVar("keelson_request_id", default=None)
trace_id_var: ContextVar[str | None] = ContextVar("keelson_trace_id", default=None)
user_id_var: ContextVar[str | None] = ContextVar("keelson_user_id", default=None)

_VARS = {"request_id": request_id_var, "trace_id": trace_id_var, "user_id": user_id_var}


def current_context() -> dict[str, str | None]:
    return {name: var.get() for name, var in _VARS.items()}


@contextmanager
def bind(**values: str | None) -> Iterator[None]:
    """Bind request_id / trace_id / user_id for the duration of the block."""
    tokens = [(_VARS[name], _VARS[name].set(value)) for name, value in values.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)

"""Context bound to every log record: request id, trace id, user."""

from __future__ import annotations

from contextlib import AbstractContextManager
from contextvars import ContextVar, Token
from types import TracebackType

__all__ = ["bind", "current_context", "request_id_var", "trace_id_var", "user_id_var"]

request_id_var: ContextVar[str | None] = ContextVar("keelson_request_id", default=None)
trace_id_var: ContextVar[str | None] = ContextVar("keelson_trace_id", default=None)
user_id_var: ContextVar[str | None] = ContextVar("keelson_user_id", default=None)

_VARS = {"request_id": request_id_var, "trace_id": trace_id_var, "user_id": user_id_var}


def current_context() -> dict[str, str | None]:
    return {name: var.get() for name, var in _VARS.items()}


def bind(**values: str | None) -> AbstractContextManager[None]:
    """Bind request_id / trace_id / user_id for the duration of the block."""
    return _Binding(values)


class _Binding:
    """A class, not a @contextmanager generator: entered per request, it costs half as much."""

    __slots__ = ("_tokens", "_values")

    def __init__(self, values: dict[str, str | None]) -> None:
        for name in values:
            if name not in _VARS:
                raise KeyError(name)
        self._values = values
        self._tokens: list[tuple[ContextVar[str | None], Token[str | None]]] = []

    def __enter__(self) -> None:
        self._tokens = [
            (_VARS[name], _VARS[name].set(value)) for name, value in self._values.items()
        ]

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for var, token in reversed(self._tokens):
            var.reset(token)

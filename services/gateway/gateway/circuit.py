"""A circuit breaker per upstream: closed, open after N failures, half-open probe."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from enum import StrEnum

__all__ = ["CircuitBreaker", "CircuitState"]


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Counts consecutive failures; while open, `acquire` says how long to wait instead.

    An open circuit lets exactly one probe through (half-open) after its open period: the
    probe's success closes the circuit, its failure opens it again for twice as long as
    before (from `min_open` up to `reset_timeout`), so an upstream that restarts is tried
    again within a fraction of a second, one that stays down at most every `reset_timeout`.
    `upstream_ready` (an active health check saw the upstream answer) ends the open period
    at once. Only the task holding the probe can free it or judge it: a request admitted
    before the circuit opened and finishing late neither frees the probe slot nor extends
    the open period.
    """

    def __init__(
        self,
        *,
        failure_threshold: int,
        reset_timeout: float,
        min_open: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[CircuitState], None] | None = None,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.min_open = min(min_open, reset_timeout)
        self._clock = clock
        self._on_change = on_change
        self.state = CircuitState.CLOSED
        self.failures = 0
        self.open_for = self.min_open
        self._opened_at = 0.0
        self._probe: asyncio.Task[object] | None = None

    def acquire(self) -> float | None:
        """None when the call may proceed, else seconds until the next probe is allowed."""
        if self.state is CircuitState.CLOSED:
            return None
        now = self._clock()
        if self.state is CircuitState.OPEN:
            remaining = self._opened_at + self.open_for - now
            if remaining > 0:
                return remaining
            self._set(CircuitState.HALF_OPEN)
        if self._probe is not None and not self._probe.done():
            return max(self.min_open / 5, 0.05)
        self._probe = asyncio.current_task()
        return None

    def upstream_ready(self) -> None:
        """An active health check saw the upstream ready: let the next call probe now."""
        if self.state is CircuitState.OPEN:
            self._set(CircuitState.HALF_OPEN)

    def record_success(self) -> None:
        self.failures = 0
        self.open_for = self.min_open
        self._probe = None
        if self.state is not CircuitState.CLOSED:
            self._set(CircuitState.CLOSED)

    def record_failure(self) -> None:
        if self.state is CircuitState.CLOSED:
            self.failures += 1
            if self.failures >= self.failure_threshold:
                self._open(self.min_open)
        elif self.state is CircuitState.HALF_OPEN and self._holds_probe():
            self._probe = None
            self._open(min(self.open_for * 2, self.reset_timeout))
        # Open: a call admitted before the circuit opened ended late; nothing to learn.

    def release(self) -> None:
        """The call ended without a verdict (the client went away): free its probe slot."""
        if self._holds_probe():
            self._probe = None

    def _holds_probe(self) -> bool:
        return self._probe is not None and self._probe is asyncio.current_task()

    def _open(self, period: float) -> None:
        self.open_for = period
        self._opened_at = self._clock()
        self._set(CircuitState.OPEN)

    def _set(self, state: CircuitState) -> None:
        if state is self.state:
            return
        self.state = state
        if self._on_change is not None:
            self._on_change(state)

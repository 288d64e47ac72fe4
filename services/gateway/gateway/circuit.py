"""A circuit breaker per upstream: closed, open after N failures, half-open probe."""

from __future__ import annotations

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

    After `reset_timeout` an open circuit lets exactly one probe through (half-open):
    its success closes the circuit, its failure opens it again for another period.
    """

    def __init__(
        self,
        *,
        failure_threshold: int,
        reset_timeout: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[CircuitState], None] | None = None,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._clock = clock
        self._on_change = on_change
        self.state = CircuitState.CLOSED
        self.failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False

    def acquire(self) -> float | None:
        """None when the call may proceed, else seconds until the next probe is allowed."""
        if self.state is CircuitState.CLOSED:
            return None
        now = self._clock()
        if self.state is CircuitState.OPEN:
            remaining = self._opened_at + self.reset_timeout - now
            if remaining > 0:
                return remaining
            self._set(CircuitState.HALF_OPEN)
        if self._probe_in_flight:
            return max(self.reset_timeout / 10, 0.1)
        self._probe_in_flight = True
        return None

    def record_success(self) -> None:
        self.failures = 0
        self._probe_in_flight = False
        if self.state is not CircuitState.CLOSED:
            self._set(CircuitState.CLOSED)

    def record_failure(self) -> None:
        self.failures += 1
        self._probe_in_flight = False
        if self.state is CircuitState.HALF_OPEN or self.failures >= self.failure_threshold:
            self._opened_at = self._clock()
            if self.state is not CircuitState.OPEN:
                self._set(CircuitState.OPEN)

    def release(self) -> None:
        """The call ended without a verdict (the client went away): free the probe slot."""
        self._probe_in_flight = False

    def _set(self, state: CircuitState) -> None:
        self.state = state
        if self._on_change is not None:
            self._on_change(state)

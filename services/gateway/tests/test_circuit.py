"""The circuit breaker on its own, with a clock the test moves."""

import asyncio

import pytest

from gateway.circuit import CircuitBreaker, CircuitState


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def breaker(clock: Clock) -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=3, reset_timeout=10, min_open=0.5, clock=clock)


async def test_a_failed_probe_backs_off_doubling_up_to_the_reset_timeout(clock: Clock) -> None:
    circuit = breaker(clock)
    for _ in range(3):
        assert circuit.acquire() is None
        circuit.record_failure()
    assert circuit.state is CircuitState.OPEN
    assert circuit.acquire() == pytest.approx(0.5)
    periods = []
    for _ in range(7):
        clock.now += circuit.open_for
        assert circuit.acquire() is None  # the probe
        assert circuit.state is CircuitState.HALF_OPEN
        circuit.record_failure()
        periods.append(circuit.open_for)
    assert periods == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    clock.now += 10
    assert circuit.acquire() is None
    circuit.record_success()
    assert circuit.state is CircuitState.CLOSED
    assert circuit.open_for == 0.5  # the next outage starts from the short period again


async def test_an_upstream_seen_ready_is_probed_at_once(clock: Clock) -> None:
    circuit = breaker(clock)
    for _ in range(3):
        circuit.record_failure()
    assert circuit.acquire() is not None
    circuit.upstream_ready()
    assert circuit.acquire() is None
    circuit.record_success()
    assert circuit.state is CircuitState.CLOSED


async def test_only_the_probe_frees_the_probe_slot_or_judges_it(clock: Clock) -> None:
    circuit = breaker(clock)
    for _ in range(3):
        circuit.record_failure()
    clock.now += 0.5
    probe_admitted = asyncio.Event()
    finish_probe = asyncio.Event()

    async def probe() -> None:
        assert circuit.acquire() is None
        probe_admitted.set()
        await finish_probe.wait()
        circuit.record_failure()

    async def other_request() -> float | None:
        waited = circuit.acquire()
        # Requests that were refused, or admitted before the circuit opened, end here.
        circuit.release()
        circuit.record_failure()
        return waited

    probing = asyncio.create_task(probe())
    await probe_admitted.wait()
    assert await asyncio.create_task(other_request()) is not None  # the slot is taken
    assert circuit.state is CircuitState.HALF_OPEN  # another's failure judged nothing
    assert await asyncio.create_task(other_request()) is not None  # nor did its release free it
    finish_probe.set()
    await probing
    assert circuit.state is CircuitState.OPEN
    assert circuit.open_for == 1.0


async def test_a_late_failure_does_not_extend_the_open_period(clock: Clock) -> None:
    circuit = breaker(clock)
    for _ in range(3):
        circuit.record_failure()
    clock.now += 0.4
    circuit.record_failure()  # a request admitted while closed, timing out now
    clock.now += 0.1
    assert circuit.acquire() is None  # still open for 0.5 s from the first opening

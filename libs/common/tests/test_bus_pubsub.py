import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from keelson.bus import RedisBus
from keelson.config import BusSettings
from keelson_dev.testing import eventually


@pytest.fixture
async def two_buses(redis: Redis) -> AsyncIterator[tuple[RedisBus, RedisBus]]:
    settings = BusSettings(block_ms=50)
    buses = (
        RedisBus(redis, producer="one", settings=settings),
        RedisBus(redis, producer="two", settings=settings),
    )
    yield buses
    for bus in buses:
        await bus.stop()


async def test_a_broadcast_reaches_every_process_listening_on_its_channel(
    two_buses: tuple[RedisBus, RedisBus],
) -> None:
    sender, listener = two_buses
    channel = f"auth.revocations.{uuid.uuid4().hex[:8]}"
    got: dict[str, list[dict[str, Any]]] = {"early": [], "late": [], "sender": []}

    def record(name: str) -> Callable[[dict[str, Any]], Any]:
        async def handler(payload: dict[str, Any]) -> None:
            got[name].append(payload)

        return handler

    listener.on_broadcast(channel, record("early"))
    sender.on_broadcast(channel, record("sender"))
    await listener.start()
    await sender.start()
    listener.on_broadcast(channel, record("late"))  # registered after start
    listener.on_broadcast(f"{channel}.other", record("late"))
    await listener.wait_ready()
    await sender.wait_ready()

    await sender.broadcast(channel, {"jti": "abc", "exp": 123})

    await eventually(lambda: all(got.values()))
    expected = [{"jti": "abc", "exp": 123}]
    assert got == {"early": expected, "late": expected, "sender": expected}


async def test_a_failing_broadcast_handler_does_not_stop_the_others(
    two_buses: tuple[RedisBus, RedisBus],
) -> None:
    bus, _ = two_buses
    channel = f"config.reload.{uuid.uuid4().hex[:8]}"
    got: list[int] = []

    async def broken(payload: dict[str, Any]) -> None:
        raise RuntimeError("boom")

    async def working(payload: dict[str, Any]) -> None:
        got.append(payload["n"])

    bus.on_broadcast(channel, broken)
    bus.on_broadcast(channel, working)
    await bus.start()
    await bus.wait_ready()

    await bus.broadcast(channel, {"n": 1})
    await bus.broadcast(channel, {"n": 2})

    await eventually(lambda: got == [1, 2])

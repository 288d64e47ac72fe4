"""What auth puts on the bus: outbox events relayed after commit, revocation broadcasts."""

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from jose import jwt
from redis.asyncio import Redis

from keelson.auth import REVOCATIONS_CHANNEL
from keelson.bus import RedisBus
from keelson.events import Envelope
from keelson_dev.testing import eventually

SignedIn = Callable[..., Awaitable[tuple[dict[str, Any], dict[str, Any]]]]


@pytest.fixture
async def listener(redis_url: str) -> AsyncIterator[tuple[RedisBus, list[Any]]]:
    redis = Redis.from_url(redis_url)
    bus = RedisBus(redis, producer="test-listener")
    received: list[Any] = []
    yield bus, received
    await bus.stop()
    await redis.aclose()


async def test_registration_reaches_the_bus_through_the_outbox(
    client: httpx.AsyncClient,
    register: Callable[..., Awaitable[dict[str, Any]]],
    listener: tuple[RedisBus, list[Envelope]],
) -> None:
    bus, received = listener

    async def collect(envelope: Envelope) -> None:
        received.append(envelope)

    bus.subscribe("auth.user_registered", collect, group=f"test-{uuid.uuid4().hex[:8]}")
    await bus.start()
    await bus.wait_ready()
    user = await register(client)
    await eventually(lambda: any(e.data.get("user_id") == user["id"] for e in received))
    [envelope] = [e for e in received if e.data.get("user_id") == user["id"]]
    assert envelope.producer == "auth" and envelope.type == "auth.user_registered"


async def test_logout_is_broadcast_to_every_replica(
    client: httpx.AsyncClient,
    signed_in: SignedIn,
    auth_header: Callable[[dict[str, Any]], dict[str, str]],
    listener: tuple[RedisBus, list[dict[str, Any]]],
) -> None:
    bus, received = listener

    async def collect(payload: dict[str, Any]) -> None:
        received.append(payload)

    bus.on_broadcast(REVOCATIONS_CHANNEL, collect)
    await bus.start()
    await bus.wait_ready()
    _, tokens = await signed_in()
    claims = jwt.get_unverified_claims(tokens["access_token"])
    assert (
        await client.post("/api/v1/auth/logout", headers=auth_header(tokens))
    ).status_code == 204
    await eventually(lambda: any(p.get("jti") == claims["jti"] for p in received))
    [payload] = [p for p in received if p.get("jti") == claims["jti"]]
    assert payload["exp"] == claims["exp"]

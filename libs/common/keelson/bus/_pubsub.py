"""Ephemeral broadcasts over Redis pub/sub (`bus:broadcast:<channel>`).

Only processes subscribed at the moment of a broadcast receive it, and a handler that
fails is not retried: use it for what is fine to miss or is also stored elsewhere
(a revoked token id that also lives in the database, a config reload signal).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from keelson.bus._base import Subscriptions
from keelson.tasks import cancel_and_wait

__all__ = ["RedisBroadcaster", "broadcast_key"]

_log = logging.getLogger("keelson.bus")
_PREFIX = "bus:broadcast:"


def broadcast_key(channel: str) -> str:
    return _PREFIX + channel


class RedisBroadcaster:
    """Publishes broadcasts and runs the handlers registered in `subscriptions`."""

    def __init__(self, redis: Redis, subscriptions: Subscriptions) -> None:
        self.redis = redis
        self.subscriptions = subscriptions
        self._pubsub: PubSub | None = None
        self._task: asyncio.Task[None] | None = None
        self._confirmed: set[str] = set()
        self._has_channels = asyncio.Event()
        self._confirmation = asyncio.Event()
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def alive(self) -> bool:
        return self._task is None or not self._task.done()

    async def broadcast(self, channel: str, payload: Mapping[str, Any]) -> None:
        await self.redis.publish(broadcast_key(channel), orjson.dumps(dict(payload)))

    async def start(self) -> None:
        self._pubsub = self.redis.pubsub()
        self._task = asyncio.create_task(self._listen(), name="bus-broadcasts")
        channels = list(self.subscriptions.broadcasts)
        if channels:
            await self._pubsub.subscribe(*[broadcast_key(c) for c in channels])
            self._has_channels.set()

    def watch(self, channel: str) -> None:
        """Subscribe to a channel registered after `start`."""
        if self._pubsub is None:
            return
        task = asyncio.create_task(self._subscribe(channel))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _subscribe(self, channel: str) -> None:
        assert self._pubsub is not None
        await self._pubsub.subscribe(broadcast_key(channel))
        self._has_channels.set()

    async def wait_ready(self) -> None:
        """Until Redis has confirmed every registered channel."""
        while True:
            await asyncio.gather(*self._pending)
            if self._pubsub is None or set(self.subscriptions.broadcasts) <= self._confirmed:
                return
            self._confirmation.clear()
            await self._confirmation.wait()

    async def stop(self) -> None:
        await cancel_and_wait(*self._pending, self._task)
        self._task = None
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
            self._pubsub = None
        self._confirmed.clear()

    async def _listen(self) -> None:
        assert self._pubsub is not None
        backoff = 0.1
        while True:
            if not self._pubsub.subscribed:
                self._has_channels.clear()
                await self._has_channels.wait()
                continue
            try:
                message = await self._pubsub.get_message(timeout=1.0)
                backoff = 0.1
            except (RedisError, OSError) as exc:
                _log.warning("bus broadcasts lost Redis: %s", exc)
                self._confirmed.clear()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if message is not None:
                await self._on_message(message)

    async def _on_message(self, message: dict[str, Any]) -> None:
        channel = message["channel"]
        channel = (channel.decode() if isinstance(channel, bytes) else channel)[len(_PREFIX) :]
        if message["type"] == "subscribe":
            self._confirmed.add(channel)
            self._confirmation.set()
        elif message["type"] == "message":
            try:
                payload = orjson.loads(message["data"])
            except orjson.JSONDecodeError:
                _log.warning("bus broadcast on %s is not JSON; dropped", channel)
                return
            await self.subscriptions.deliver_broadcast(channel, payload)

"""The Redis bus: durable events on Streams, broadcasts on pub/sub."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from redis.asyncio import Redis

from keelson.bus._base import (
    BatchHandler,
    BroadcastHandler,
    Group,
    Handler,
    Subscriptions,
    to_envelope,
)
from keelson.bus._dedupe import RedisProcessedIds
from keelson.bus._pubsub import RedisBroadcaster
from keelson.bus._streams import GroupConsumer, StreamPublisher, consumer_name
from keelson.config import BusSettings
from keelson.events import Envelope, Event
from keelson.plugins import Health

__all__ = ["RedisBus"]


class RedisBus:
    """At-least-once events through Redis Streams consumer groups; see `keelson.bus.Bus`.

    The Redis client is the caller's (it is not closed by `stop`).
    """

    transport = "redis"

    def __init__(
        self,
        redis: Redis,
        *,
        producer: str,
        settings: BusSettings | None = None,
        consumer: str | None = None,
    ) -> None:
        self.redis = redis
        self.producer = producer
        self.settings = settings or BusSettings()
        self.consumer = consumer or consumer_name()
        self.processed = RedisProcessedIds(redis)
        self._subscriptions = Subscriptions()
        self._publisher = StreamPublisher(redis, maxlen=self.settings.stream_maxlen)
        self._broadcaster = RedisBroadcaster(redis, self._subscriptions)
        self._consumers: dict[str, GroupConsumer] = {}
        self._running = False

    def subscribe(
        self, pattern: str, handler: Handler, *, group: str, dedupe: bool = False
    ) -> None:
        self._consume(self._subscriptions.add(pattern, handler, group=group, dedupe=dedupe))

    def subscribe_batch(self, pattern: str, handler: BatchHandler, *, group: str) -> None:
        self._consume(self._subscriptions.add_batch(pattern, handler, group=group))

    def _consume(self, entry: Group) -> None:
        """Start consuming for the group, or have its consumer look for the new topics."""
        group = entry.name
        consumer = self._consumers.get(group)
        if consumer is not None:
            consumer.refresh_soon()
            return
        consumer = GroupConsumer(
            self.redis,
            entry,
            consumer=self.consumer,
            settings=self.settings,
            processed=self.processed,
        )
        self._consumers[group] = consumer
        if self._running:
            consumer.start()

    def on_broadcast(self, channel: str, handler: BroadcastHandler) -> None:
        if self._subscriptions.add_broadcast(channel, handler) and self._running:
            self._broadcaster.watch(channel)

    async def publish(self, event: Event | Envelope) -> Envelope:
        envelope = to_envelope(event, self.producer)
        await self._publisher.publish(envelope)
        return envelope

    async def publish_many(self, events: Sequence[Event | Envelope]) -> list[Envelope]:
        envelopes = [to_envelope(event, self.producer) for event in events]
        if envelopes:
            await self._publisher.publish_many(envelopes)
        return envelopes

    async def broadcast(self, channel: str, payload: Mapping[str, Any]) -> None:
        await self._broadcaster.broadcast(channel, payload)

    async def start(self) -> None:
        if self._running:
            return
        self._running = True
        await self._broadcaster.start()
        for consumer in self._consumers.values():
            consumer.start()

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        await asyncio.gather(*(c.stop() for c in self._consumers.values()))
        await self._broadcaster.stop()

    async def wait_ready(self, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(c.ready.wait() for c in self._consumers.values()))
            await self._broadcaster.wait_ready()

    async def health(self) -> Health:
        await self.redis.ping()
        dead = [name for name, c in self._consumers.items() if not c.alive]
        if self._running and (dead or not self._broadcaster.alive):
            return Health(ok=False, detail=f"redis streams: consumers stopped: {dead}")
        return Health(ok=True, detail=f"redis streams, {len(self._consumers)} group(s)")

"""The bus as a plugin: Redis Streams when the container has Redis, ZeroMQ otherwise."""

from __future__ import annotations

import dataclasses

from keelson.bus._base import Bus
from keelson.bus._redis import RedisBus
from keelson.bus._zmq import ZmqBus
from keelson.config import KeelsonSettings
from keelson.plugins import Health, Key, Plugin, PluginMetadata, Priority
from keelson.redis_plugin import REDIS

__all__ = ["BUS", "BusPlugin", "RedisBusPlugin", "bus_plugin"]

BUS: Key[Bus] = Key("bus")


class BusPlugin(Plugin):
    """Provides `BUS`; the transport is chosen once, when the plugin initializes."""

    metadata = PluginMetadata(
        name="bus",
        priority=Priority.INFRASTRUCTURE,
        description="Event bus: Redis Streams and pub/sub, or ZeroMQ without Redis",
    )

    async def initialize(self) -> None:
        settings = self.container.settings
        redis = self.container.resolve_optional(REDIS)
        self.bus: RedisBus | ZmqBus
        if redis is not None:
            self.bus = RedisBus(redis, producer=settings.service, settings=settings.bus)
        else:
            self.bus = ZmqBus(
                producer=settings.service,
                xsub_endpoint=settings.bus.zmq_xsub_endpoint,
                xpub_endpoint=settings.bus.zmq_xpub_endpoint,
            )
        self.container.provide(BUS, self.bus)

    async def start(self) -> None:
        await self.bus.start()

    async def stop(self) -> None:
        await self.bus.stop()

    async def health(self) -> Health:
        result = await self.bus.health()
        return dataclasses.replace(
            result, detail=f"transport={self.bus.transport}; {result.detail}"
        )


class RedisBusPlugin(BusPlugin):
    """The bus plugin declaring its dependency on the `redis` plugin."""

    metadata = dataclasses.replace(BusPlugin.metadata, depends_on=("redis",))


def bus_plugin(settings: KeelsonSettings) -> type[BusPlugin]:
    """The bus plugin class to register: it depends on `redis` only when Redis is configured."""
    return RedisBusPlugin if settings.redis_enabled else BusPlugin

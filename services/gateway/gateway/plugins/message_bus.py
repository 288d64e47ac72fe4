"""The message_bus plugin: hosts the ZeroMQ XPUB/XSUB broker the no-Redis bus connects to."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel

from gateway.pipeline import GatewayPlugin
from keelson.bus import ZmqBroker
from keelson.plugins import Health, PluginMetadata, Priority

__all__ = ["BrokerMode", "MessageBusConfig", "MessageBusPlugin"]


class BrokerMode(StrEnum):
    AUTO = "auto"  # host the broker only when there is no Redis (whose bus needs none)
    ALWAYS = "always"
    NEVER = "never"


class MessageBusConfig(BaseModel):
    mode: BrokerMode = BrokerMode.AUTO


class MessageBusPlugin(GatewayPlugin):
    metadata = PluginMetadata(
        name="message_bus",
        priority=Priority.INFRASTRUCTURE,
        description="ZeroMQ XPUB/XSUB broker for the bus when Redis is off (ports from bus.*)",
        # A second gateway on the same host finds the ports taken: it runs degraded.
        required=False,
    )

    async def initialize(self) -> None:
        config = self.options(MessageBusConfig)
        settings = self.container.settings
        hosting = config.mode is BrokerMode.ALWAYS or (
            config.mode is BrokerMode.AUTO and settings.redis_url is None
        )
        self.broker = (
            ZmqBroker(settings.bus.zmq_xsub_endpoint, settings.bus.zmq_xpub_endpoint)
            if hosting
            else None
        )

    async def start(self) -> None:
        if self.broker is not None:
            self.broker.start()

    async def stop(self) -> None:
        if self.broker is not None:
            self.broker.stop()

    async def health(self) -> Health:
        if self.broker is None:
            return Health(ok=True, detail="not hosting: the bus runs on Redis")
        if not self.broker.running:
            return Health(ok=False, detail="broker thread stopped", critical=False)
        publishers, subscribers = self.broker.endpoints
        return Health(ok=True, detail=f"publishers -> {publishers}, subscribers <- {subscribers}")

"""The notifications service's plugin: templates, channels, the delivery worker, event intake."""

from __future__ import annotations

import asyncio
import logging

from keelson.bus import BUS, Bus, RedisBus
from keelson.db import DB_ENGINE, DB_SESSIONS
from keelson.keys import KeyManager
from keelson.plugins import Health, Key, Plugin, PluginMetadata, Priority
from keelson.redis_plugin import REDIS
from notifications_service.channels import Channel
from notifications_service.channels.email import SmtpEmail
from notifications_service.channels.slack import SlackWebhook
from notifications_service.channels.sms import sms_channel
from notifications_service.channels.webhook import SignedWebhook
from notifications_service.delivery import DeliveryWorker
from notifications_service.intake import CONTACT_CHANGED, EventIntake
from notifications_service.rendering import Composer
from notifications_service.settings import NotificationsSettings, Settings
from notifications_service.templates import TemplateRenderer

__all__ = ["CHANNELS", "RENDERER", "WORKER", "NotificationsPlugin", "build_channels"]

_log = logging.getLogger("notifications_service.plugin")

WORKER: Key[DeliveryWorker] = Key("notifications.worker")
RENDERER: Key[TemplateRenderer] = Key("notifications.renderer")
CHANNELS: Key[dict[str, Channel]] = Key("notifications.channels")


def build_channels(settings: NotificationsSettings) -> dict[str, Channel]:
    """One implementation per channel, chosen from the settings (SMS: Twilio or sandbox)."""
    return {
        "email": SmtpEmail(settings.email),
        "sms": sms_channel(settings.sms),
        "slack": SlackWebhook(settings.slack),
        "webhook": SignedWebhook(settings.webhook),
    }


class NotificationsPlugin(Plugin):
    metadata = PluginMetadata(
        name="notifications",
        priority=Priority.BUSINESS,
        depends_on=("database", "bus"),
        description="Channels, templates, the delivery worker and event intake",
    )

    async def initialize(self) -> None:
        settings = self.container.settings
        assert isinstance(settings, Settings)
        self.config = settings.notifications
        self.renderer = TemplateRenderer(default_locale=self.config.default_locale)
        self.channels = build_channels(self.config)
        sessions = self.container.resolve(DB_SESSIONS)
        composer = Composer(
            self.renderer, KeyManager.from_settings(settings), base_url=self.config.public_base_url
        )
        self.worker = DeliveryWorker(
            sessions, self.channels, composer, self.config.delivery, producer=settings.service
        )
        self.container.provide(WORKER, self.worker)
        self.container.provide(RENDERER, self.renderer)
        self.container.provide(CHANNELS, self.channels)

        bus = self.container.resolve(BUS)
        redis = self.container.resolve_optional(REDIS)
        self.extra_buses: list[RedisBus] = []
        if isinstance(bus, RedisBus) and redis is not None:
            self.extra_buses = [
                RedisBus(redis, producer=settings.service, settings=settings.bus)
                for _ in range(self.config.intake_consumers - 1)
            ]
        consumers: list[Bus] = [bus, *self.extra_buses]
        self.intake = EventIntake(
            self.container.resolve(DB_ENGINE),
            self.config,
            on_queued=self.worker.wake,
            connections=len(consumers),
        )
        for consumer in consumers:
            for topic in sorted({*self.config.events, "auth.user_registered", CONTACT_CHANGED}):
                consumer.subscribe_batch(
                    topic, self.intake.handle_batch, group=self.config.consumer_group
                )

    async def start(self) -> None:
        for bus in self.extra_buses:
            await bus.start()
        if self.config.delivery.worker:
            self.worker.start()

    async def stop(self) -> None:
        # Each consumer finishes the blocking read it has in flight (up to `bus.block_ms`)
        # before it stops: together, so the stop waits for one read, not one per consumer.
        await asyncio.gather(*(bus.stop() for bus in self.extra_buses))
        if self.config.delivery.worker:
            await self.worker.stop()
        await self.intake.close()
        for channel in self.channels.values():
            try:
                await channel.close()
            except Exception:
                _log.exception("closing the %s channel failed", channel.name)

    async def health(self) -> Health:
        if self.config.delivery.worker and not self.worker.alive:
            return Health(ok=False, detail="delivery worker stopped")
        if self.worker.last_error:
            return Health(ok=False, detail=self.worker.last_error, critical=False)
        return Health(ok=True, detail=f"channels: {', '.join(self.channels)}")

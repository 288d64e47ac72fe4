"""The notifications service's app factory."""

from __future__ import annotations

from fastapi import FastAPI

from keelson.auth import AuthPlugin
from keelson.outbox import OutboxRelayPlugin
from keelson.service import create_service_app, startup_settings
from notifications_service.api import routers
from notifications_service.plugin import NotificationsPlugin
from notifications_service.settings import Settings

__all__ = ["create_app"]


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_service_app(
        settings or startup_settings(Settings),
        plugins=[AuthPlugin, NotificationsPlugin, OutboxRelayPlugin],
        routers=routers,
        title="Keelson notifications",
        description="Email, SMS, Slack and signed webhooks: sent once, retried, or dead-lettered.",
    )

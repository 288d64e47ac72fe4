"""The payments service's app factory."""

from __future__ import annotations

from fastapi import FastAPI

from keelson.auth import AuthPlugin
from keelson.outbox import OutboxRelayPlugin
from keelson.service import create_service_app, startup_settings
from payments_service.api import routers
from payments_service.plugin import PaymentsPlugin
from payments_service.settings import Settings

__all__ = ["create_app"]


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_service_app(
        settings or startup_settings(Settings),
        plugins=[AuthPlugin, PaymentsPlugin, OutboxRelayPlugin],
        routers=routers,
        title="Keelson payments",
        description="Customers, payment intents, refunds and Stripe webhooks "
        "(an in-database sandbox in test mode when no Stripe key is set).",
    )

"""The payments service's app factory."""

from __future__ import annotations

from fastapi import FastAPI

from keelson.auth import AuthPlugin
from keelson.collector import tune_collector
from keelson.outbox import OutboxRelayPlugin
from keelson.service import create_service_app, startup_settings
from payments_service.api import routers
from payments_service.plugin import PaymentsPlugin
from payments_service.settings import Settings
from payments_service.webhook_endpoint import StripeWebhookEndpoint

__all__ = ["create_app"]


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_service_app(
        settings or startup_settings(Settings),
        plugins=[AuthPlugin, PaymentsPlugin, OutboxRelayPlugin],
        routers=routers,
        front=StripeWebhookEndpoint,
        on_startup=[_tune_collector],
        title="Keelson payments",
        description="Customers, payment intents, refunds and Stripe webhooks "
        "(an in-database sandbox in test mode when no Stripe key is set).",
    )


async def _tune_collector(_: FastAPI) -> None:
    tune_collector()

"""The auth service's app factory."""

from __future__ import annotations

from fastapi import FastAPI

from auth_service.api import routers
from auth_service.plugin import AuthServicePlugin
from auth_service.settings import Settings
from keelson.config import load_settings
from keelson.http import create_app as create_keelson_app
from keelson.logging import configure_logging
from keelson.outbox import OutboxRelayPlugin
from keelson.service import build_container

__all__ = ["create_app"]


def create_app(settings: Settings | None = None) -> FastAPI:
    if settings is None:
        settings = load_settings(Settings)
        configure_logging(settings)
    container = build_container(settings, [AuthServicePlugin, OutboxRelayPlugin])
    return create_keelson_app(
        settings,
        container=container,
        routers=routers,
        title="Keelson auth",
        description="Accounts, passwords, access and refresh tokens, roles, JWKS.",
    )

"""The notifications service's app factory."""

from __future__ import annotations

from fastapi import FastAPI

from keelson.config import load_settings
from keelson.http import create_app as create_keelson_app
from keelson.logging import configure_logging
from keelson.service import build_container
from notifications_service.api import routers
from notifications_service.settings import Settings

__all__ = ["create_app"]


def create_app(settings: Settings | None = None) -> FastAPI:
    if settings is None:
        settings = load_settings(Settings)
        configure_logging(settings)
    container = build_container(settings)
    return create_keelson_app(
        settings,
        container=container,
        routers=routers,
        title="Keelson notifications",
        description="The notifications service.",
    )

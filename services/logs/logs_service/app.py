"""The logs service's app factory."""

from __future__ import annotations

from fastapi import FastAPI

from keelson.auth import AuthPlugin
from keelson.config import load_settings
from keelson.http import create_app as create_keelson_app
from keelson.logging import configure_logging
from keelson.service import build_container
from logs_service.api import routers
from logs_service.plugins import (
    AuditEventsPlugin,
    IngestPlugin,
    LogStorePlugin,
    PartitionUpkeepPlugin,
)
from logs_service.settings import Settings

__all__ = ["create_app"]


def create_app(settings: Settings | None = None) -> FastAPI:
    if settings is None:
        settings = load_settings(Settings)
        configure_logging(settings)
    container = build_container(
        settings,
        [AuthPlugin, LogStorePlugin, IngestPlugin, PartitionUpkeepPlugin, AuditEventsPlugin],
    )
    return create_keelson_app(
        settings,
        container=container,
        routers=routers,
        title="Keelson logs",
        description="Log records shipped by every service: search, live tail and counts.",
    )

"""The gateway's app factory: Keelson's app with the plugin pipeline innermost."""

from __future__ import annotations

import gc
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.middleware import Middleware

from gateway.api import routers
from gateway.pipeline import Pipeline, PipelineMiddleware
from gateway.plugins import GATEWAY_PLUGINS
from gateway.plugins.routing import CATALOG
from gateway.reload import install_sighup
from gateway.settings import Settings
from gateway.upstreams import RoutingConfig
from keelson.auth import AuthPlugin
from keelson.config import PluginSettings, load_settings
from keelson.http import create_app as create_keelson_app
from keelson.logging import configure_logging
from keelson.service import build_container

__all__ = ["create_app"]


def create_app(settings: Settings | None = None) -> FastAPI:
    if settings is None:
        settings = load_settings(Settings)
        configure_logging(settings)
    _point_auth_at_upstream(settings)
    container = build_container(settings, [AuthPlugin, *GATEWAY_PLUGINS], database=False)
    pipeline = Pipeline(container, GATEWAY_PLUGINS)

    async def compose_pipeline(app: FastAPI) -> None:
        pipeline.rebuild()
        install_sighup(app)
        # What start-up built lives as long as the process: keep it out of the cyclic
        # collector's full passes, which would otherwise walk it all every few thousand
        # requests (tens of milliseconds each: the p99 under load).
        gc.collect()
        gc.freeze()

    app = create_keelson_app(
        settings,
        container=container,
        routers=routers,
        title="Keelson gateway",
        description="The suite's public entry point: every service's API behind one port.",
        on_startup=[compose_pipeline],
    )
    # Innermost, so the request id, metrics and security headers wrap the whole pipeline.
    app.user_middleware.append(Middleware(PipelineMiddleware, pipeline=pipeline))
    app.state.pipeline = pipeline

    def merged_openapi() -> dict[str, Any]:
        own = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        catalog = container.resolve_optional(CATALOG)
        return catalog.merged(own) if catalog is not None else own

    app.openapi = merged_openapi  # type: ignore[method-assign]
    return app


def _point_auth_at_upstream(settings: Settings) -> None:
    """Unless configured otherwise, fetch the JWKS from the auth upstream the gateway routes to."""
    section = settings.plugin("auth")
    if "jwks_url" in (section.model_extra or {}):
        return
    routing = RoutingConfig.model_validate(settings.plugin("routing").model_dump())
    auth = routing.upstreams["auth"].url
    values = {**section.model_dump(), "jwks_url": auth + "/.well-known/jwks.json"}
    settings.plugins = {**settings.plugins, "auth": PluginSettings(**values)}

"""The gateway's app factory: Keelson's app with the plugin pipeline innermost."""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI

from gateway.api import routers
from gateway.connections import BodyReadTimeout
from gateway.openapi import CATALOG
from gateway.pipeline import Pipeline
from gateway.plugins import GATEWAY_PLUGINS
from gateway.plugins.routing import UPSTREAM_TRANSPORTS
from gateway.reload import install_sighup
from gateway.settings import Settings
from gateway.transport import UpstreamTransport
from gateway.upstreams import RoutingConfig
from keelson.auth import AuthPlugin
from keelson.collector import tune_collector
from keelson.config import PluginSettings, load_settings
from keelson.http import KeelsonApp
from keelson.http import create_app as create_keelson_app
from keelson.lifeline import SERVER_PID_ENV, tie_to_parent
from keelson.logging import configure_logging
from keelson.security_headers import SERVER, SecurityHeaders
from keelson.service import build_container

__all__ = ["create_app"]


def create_app(
    settings: Settings | None = None,
    *,
    transports: Mapping[str, UpstreamTransport] | None = None,
) -> KeelsonApp:
    """The gateway; `transports` replace the named upstreams' connection pools (tests hand
    in `gateway.asgi_upstream.ASGIUpstream` to reach an upstream app in process).

    A request goes, in this order: Keelson's `ServiceMiddleware` (request id, metrics,
    security headers, the access record's timing), the pipeline (the request's context,
    then each running plugin's layer, routing's proxy innermost), and, for what no layer
    answered, FastAPI's stack with the gateway's own routes (`gateway.api`). The OpenAPI
    document served is the gateway's own merged with the upstreams' (the catalog's).
    """
    if settings is None:
        settings = load_settings(Settings)
        configure_logging(settings)
    _point_auth_at_upstream(settings)
    container = build_container(settings, [AuthPlugin, *GATEWAY_PLUGINS], database=False)
    if transports:
        container.provide(UPSTREAM_TRANSPORTS, transports)
    pipeline = Pipeline(container, GATEWAY_PLUGINS, settings)

    def merged_openapi(own: dict[str, Any]) -> dict[str, Any]:
        catalog = container.resolve_optional(CATALOG)
        return catalog.merged(own) if catalog is not None else own

    async def compose_pipeline(_: FastAPI) -> None:
        pipeline.rebuild()
        install_sighup(app)
        tune_collector()

    app = create_keelson_app(
        settings,
        container=container,
        routers=routers,
        title="Keelson gateway",
        description="The suite's public entry point: every service's API behind one port.",
        on_startup=[compose_pipeline],
        front=pipeline.front,
        openapi_merge=merged_openapi,
        # Answers refused before the security layer (which enforces its own policy, this
        # server name included) still name no server implementation.
        security_headers=SecurityHeaders(server=SERVER),
    )
    app.state.pipeline = pipeline
    return app


def create_served_app() -> BodyReadTimeout:
    """What `python -m gateway` serves: the gateway from the environment's settings, its
    request bodies under `connections.body_timeout_seconds` (408 when one stalls, 400 when
    granian cannot read one). Every answer's `server` header is Keelson's, not granian's:
    the security-header policies carry it (`SecurityHeaders(server=...)`).

    Built in each of granian's worker processes, which it ties to granian's main process
    (`gateway.serve` names it): a worker left behind by a SIGKILLed main process stops
    with SIGINT, which granian's worker takes as a stop and Keelson's drain pause does
    not hold up (its listener must close for the next server to bind the port).
    """
    settings = load_settings(Settings)
    configure_logging(settings)
    server = os.environ.get(SERVER_PID_ENV)
    if server is not None:
        grace = max(1.0, settings.shutdown_grace_seconds)  # granian's workers_kill_timeout
        tie_to_parent(int(server), stop_signal=signal.SIGINT, grace=grace)
    # granian is told the app is ASGI 3: the app's plain-function form serves it.
    return BodyReadTimeout(create_app(settings).dispatch, settings.connections.body_timeout_seconds)


def _point_auth_at_upstream(settings: Settings) -> None:
    """Unless configured otherwise, fetch the JWKS from the auth upstream the gateway routes to."""
    section = settings.plugin("auth")
    if "jwks_url" in (section.model_extra or {}):
        return
    routing = RoutingConfig.model_validate(settings.plugin("routing").model_dump())
    auth = routing.upstreams["auth"].url
    values = {**section.model_dump(), "jwks_url": auth + "/.well-known/jwks.json"}
    settings.plugins = {**settings.plugins, "auth": PluginSettings(**values)}

"""The log_shipping plugin: one access-log record per request, shipped by `keelson.logging`."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.context import client_ip
from gateway.openapi import OpenApiCatalog
from gateway.pipeline import GatewayPlugin, plugin_config
from gateway.plugins.routing import CATALOG
from keelson.config import PluginSettings
from keelson.http import exchange
from keelson.logging import log_access_record
from keelson.metrics import route_template
from keelson.plugins import PluginMetadata, Priority

__all__ = ["LogShippingConfig", "LogShippingPlugin"]

ACCESS_LOGGER = "gateway.access"


class LogShippingConfig(BaseModel):
    skip_paths: list[str] = ["/health", "/metrics"]
    slow_request_seconds: float = 1.0  # logged at WARNING from here on


class LogShippingPlugin(GatewayPlugin):
    metadata = PluginMetadata(
        name="log_shipping",
        priority=Priority.INFRASTRUCTURE,
        required=False,  # without it the gateway still serves, degraded
        description="Access log of every request, shipped to the log service",
    )

    async def initialize(self) -> None:
        self.config = plugin_config(LogShippingConfig, self.settings)

    def prepare_reload(self, section: PluginSettings) -> Callable[[], None]:
        config = plugin_config(LogShippingConfig, section)

        def apply() -> None:
            self.settings, self.config = section, config

        return apply

    def wrap(self, app: ASGIApp) -> ASGIApp:
        hops: int = getattr(self.container.settings, "trusted_proxy_hops", 0)
        return _AccessLog(app, self.config, hops, self.container.resolve_optional(CATALOG))


class _AccessLog:
    """Has `ServiceMiddleware`, which times every request, write its record this way."""

    def __init__(
        self,
        app: ASGIApp,
        config: LogShippingConfig,
        hops: int,
        catalog: OpenApiCatalog | None,
    ) -> None:
        self.app = app
        self.catalog = catalog
        self.skip = tuple(config.skip_paths)
        self.slow = config.slow_request_seconds
        self.hops = hops
        self.log = logging.getLogger(ACCESS_LOGGER)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain function (see GatewayPlugin.wrap): the record is written at the end.
        if scope["type"] == "http" and not scope["path"].startswith(self.skip):
            exchange(scope).record_with(self._record)
        return self.app(scope, receive, send)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        """`status` is the response's as it started; 500 if it never did (an exception is on
        its way to ServiceMiddleware, which answers 500)."""
        if "route" not in scope and self.catalog is not None:
            # Refused before routing: name the route it was meant for (metrics read it too).
            match = self.catalog.match(scope)
            if match is not None:
                scope["route"] = match
        level = logging.WARNING if seconds >= self.slow or status >= 500 else logging.INFO
        # The request, trace and user ids come from the logging context, as on every other
        # line of the request: still bound, by ServiceMiddleware and the security layer.
        log_access_record(
            self.log,
            level,
            scope["method"],
            route_template(scope),
            status,
            seconds,
            client_ip(scope, self.hops),
        )

"""The access_log plugin: one access record per request, shipped by `keelson.logging`."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.context import find_context
from gateway.pipeline import GatewayPlugin
from keelson.config import PluginSettings
from keelson.http import exchange
from keelson.logging import log_access_record
from keelson.metrics import route_template
from keelson.plugins import PluginMetadata, Priority

__all__ = ["ACCESS_LOGGER", "AccessLogConfig", "AccessLogPlugin"]

ACCESS_LOGGER = "gateway.access"


class AccessLogConfig(BaseModel):
    skip_paths: list[str] = ["/health", "/metrics"]
    slow_request_seconds: float = 1.0  # logged at WARNING from here on


class AccessLogPlugin(GatewayPlugin):
    metadata = PluginMetadata(
        name="access_log",
        priority=Priority.INFRASTRUCTURE,
        required=False,  # without it the gateway still serves, degraded
        description="Access log of every request, shipped to the log service",
    )

    async def initialize(self) -> None:
        self.config = self.options(AccessLogConfig)

    def prepare_reload(self, section: PluginSettings) -> Callable[[], None]:
        config = self.options(AccessLogConfig, section)

        def apply() -> None:
            self.settings, self.config = section, config

        return apply

    def wrap(self, app: ASGIApp) -> ASGIApp:
        return _AccessLog(app, self.config)


class _AccessLog:
    """Has `ServiceMiddleware`, which times every request, write its record this way."""

    def __init__(self, app: ASGIApp, config: AccessLogConfig) -> None:
        self.app = app
        self.skip = tuple(config.skip_paths)
        self.slow = config.slow_request_seconds
        self.log = logging.getLogger(ACCESS_LOGGER)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain function (see GatewayPlugin.wrap): the record is written at the end.
        if scope["type"] == "http" and not scope["path"].startswith(self.skip):
            exchange(scope).record_with(self._record)
        return self.app(scope, receive, send)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        """`status` is the response's as it started; 500 if it never did (an exception is on
        its way to ServiceMiddleware, which answers 500). The route is the one the pipeline
        matched, so a request refused before the proxy is logged under the route it was
        meant for (metrics read it too)."""
        level = logging.WARNING if seconds >= self.slow or status >= 500 else logging.INFO
        ctx = find_context(scope)
        # The request, trace and user ids come from the logging context, as on every other
        # line of the request: still bound, by ServiceMiddleware and the security layer.
        log_access_record(
            self.log,
            level,
            scope["method"],
            route_template(scope),
            status,
            seconds,
            ctx.client_ip if ctx is not None else None,
        )

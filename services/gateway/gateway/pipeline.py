"""The request pipeline: each running gateway plugin wraps the app in its ASGI layer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.context import RequestContext, TrustedProxies, forwarded_client
from gateway.openapi import CATALOG, OpenApiCatalog
from gateway.settings import Settings
from keelson.config import PluginSettings
from keelson.http import exchange
from keelson.plugins import Plugin, PluginContainer, PluginState

__all__ = ["GatewayPlugin", "Pipeline", "PipelineMiddleware"]


class GatewayPlugin(Plugin):
    """A plugin that may add one layer to the pipeline and re-read its config on reload."""

    def wrap(self, app: ASGIApp) -> ASGIApp:
        """Return `app` wrapped in this plugin's layer (or `app` itself: no layer).

        A layer is an ASGI app. One that has nothing to wait for on a request may be a
        plain function returning the next app's awaitable (`return self.app(scope,
        receive, send)`) rather than a coroutine awaiting it: it then adds no frame that
        every resumption of the request's task passes through. Work for the end of the
        request goes to `ServiceMiddleware` through the request's `Exchange` (headers,
        the access record), not into a `finally` around the next layer.
        """
        return app

    def prepare_reload(self, section: PluginSettings) -> Callable[[], None]:
        """Check new settings (raising `ConfigError`) and return what adopts them.

        Split in two so that a reload either applies to every plugin or to none.
        """

        def apply() -> None:
            self.settings = section

        return apply


class Pipeline:
    """Composes the running plugins' layers: the highest priority (lowest number) is outermost."""

    def __init__(
        self,
        container: PluginContainer,
        plugins: Sequence[type[GatewayPlugin]],
        settings: Settings,
    ) -> None:
        self.container = container
        self.plugins = tuple(plugins)
        self.trusted_proxy_hops = settings.trusted_proxy_hops
        self.trusted_proxies = TrustedProxies(settings.trusted_proxies)
        self.version = 0
        self.layers: tuple[str, ...] = ()
        self.catalog: OpenApiCatalog | None = None

    def rebuild(self) -> None:
        """Pick up which plugins run now; called after start and after a reload."""
        self.layers = tuple(
            p.metadata.name for p in self.running() if type(p).wrap is not GatewayPlugin.wrap
        )
        self.catalog = self.container.resolve_optional(CATALOG)
        self.version += 1

    def front(self, app: ASGIApp) -> ASGIApp:
        """The pipeline in front of `app` (the gateway's own routes), for `create_app`."""
        return PipelineMiddleware(app, pipeline=self)

    def running(self) -> list[GatewayPlugin]:
        """Running plugins by priority, then as listed; not start order, which dependencies
        may change (routing starts early because validation needs its catalog, yet its
        layer must stay innermost)."""
        running = [
            (cls.metadata.priority, i, self.container.get(cls))
            for i, cls in enumerate(self.plugins)
            if self.container.state(cls.metadata.name) is PluginState.RUNNING
        ]
        return [plugin for *_, plugin in sorted(running, key=lambda r: (r[0], r[1]))]

    def compose(self, endpoint: ASGIApp) -> ASGIApp:
        app = endpoint
        for plugin in reversed(self.running()):
            app = plugin.wrap(app)
        return app

    def describe(self) -> dict[str, Any]:
        return {"layers": list(self.layers), "version": self.version}


class PipelineMiddleware:
    """Builds each request's `RequestContext`, then runs the composed layers; what no
    layer answers (the proxy forwards what an upstream owns) goes on to `app`."""

    def __init__(self, app: ASGIApp, *, pipeline: Pipeline) -> None:
        self.app = app
        self.pipeline = pipeline
        self._version = -1
        self._chain: ASGIApp = app

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain function (see GatewayPlugin.wrap).
        pipeline = self.pipeline
        if self._version != pipeline.version:
            self._version = pipeline.version
            self._chain = pipeline.compose(self.app) if self._version else self.app
        if scope["type"] == "http":
            catalog = pipeline.catalog
            hops = pipeline.trusted_proxy_hops
            peer = scope.get("client")
            peer_ip = peer[0] if peer else "unknown"
            if hops and pipeline.trusted_proxies.believes(peer_ip):
                client_ip, forwarded_for = forwarded_client(scope, hops)
            else:  # the socket peer is the client: the usual case, without a call
                client_ip = forwarded_for = peer_ip
            RequestContext(  # attaches itself to `scope`
                scope,
                catalog.match(scope["method"], scope["path"]) if catalog is not None else None,
                client_ip,
                forwarded_for,
                exchange(scope),
            )
        return self._chain(scope, receive, send)

"""The request pipeline: each running gateway plugin wraps the app in its ASGI layer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from keelson.config import ConfigError, PluginSettings
from keelson.plugins import Plugin, PluginContainer, PluginState

__all__ = ["GatewayPlugin", "Pipeline", "PipelineMiddleware", "plugin_config"]

C = TypeVar("C", bound=BaseModel)


def plugin_config(model: type[C], section: PluginSettings) -> C:
    """The plugin's typed config from its `plugins.<name>` section; bad values fail start-up."""
    try:
        return model.model_validate(section.model_dump(exclude={"enabled"}))
    except ValidationError as exc:
        raise ConfigError(f"invalid plugin config: {exc}") from None


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

    def __init__(self, container: PluginContainer, plugins: Sequence[type[GatewayPlugin]]) -> None:
        self.container = container
        self.plugins = tuple(plugins)
        self.version = 0
        self.layers: tuple[str, ...] = ()

    def rebuild(self) -> None:
        """Pick up which plugins run now; called after start and after a reload."""
        self.layers = tuple(
            p.metadata.name for p in self.running() if type(p).wrap is not GatewayPlugin.wrap
        )
        self.version += 1

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
    """Sits innermost in the app's middleware; runs the composed layers, then the router."""

    def __init__(self, app: ASGIApp, *, pipeline: Pipeline) -> None:
        self.app = app
        self.pipeline = pipeline
        self._version = -1
        self._chain: ASGIApp = app

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if self._version != self.pipeline.version:
            self._version = self.pipeline.version
            self._chain = self.pipeline.compose(self.app) if self._version else self.app
        return self._chain(scope, receive, send)

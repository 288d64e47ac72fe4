"""The gateway's plugins, one concern each, in the order their layers wrap a request."""

from __future__ import annotations

from gateway.pipeline import GatewayPlugin
from gateway.plugins.routing import RoutingPlugin

__all__ = ["GATEWAY_PLUGINS", "RoutingPlugin"]

GATEWAY_PLUGINS: tuple[type[GatewayPlugin], ...] = (RoutingPlugin,)

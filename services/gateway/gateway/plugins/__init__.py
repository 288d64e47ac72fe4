"""The gateway's plugins, one concern each, in the order their layers wrap a request."""

from __future__ import annotations

from gateway.pipeline import GatewayPlugin
from gateway.plugins.rate_limiting import RateLimitingPlugin
from gateway.plugins.routing import RoutingPlugin
from gateway.plugins.security import SecurityPlugin
from gateway.plugins.validation import ValidationPlugin

__all__ = [
    "GATEWAY_PLUGINS",
    "RateLimitingPlugin",
    "RoutingPlugin",
    "SecurityPlugin",
    "ValidationPlugin",
]

GATEWAY_PLUGINS: tuple[type[GatewayPlugin], ...] = (
    SecurityPlugin,
    RateLimitingPlugin,
    ValidationPlugin,
    RoutingPlugin,
)

"""The gateway's plugins, one concern each, in the order their layers wrap a request."""

from __future__ import annotations

from gateway.pipeline import GatewayPlugin
from gateway.plugins.access_log import AccessLogPlugin
from gateway.plugins.encryption import EncryptionPlugin
from gateway.plugins.message_bus import MessageBusPlugin
from gateway.plugins.rate_limiting import RateLimitingPlugin
from gateway.plugins.routing import RoutingPlugin
from gateway.plugins.security import SecurityPlugin
from gateway.plugins.validation import ValidationPlugin

__all__ = [
    "GATEWAY_PLUGINS",
    "AccessLogPlugin",
    "EncryptionPlugin",
    "MessageBusPlugin",
    "RateLimitingPlugin",
    "RoutingPlugin",
    "SecurityPlugin",
    "ValidationPlugin",
]

GATEWAY_PLUGINS: tuple[type[GatewayPlugin], ...] = (
    MessageBusPlugin,
    AccessLogPlugin,
    EncryptionPlugin,
    SecurityPlugin,
    RateLimitingPlugin,
    ValidationPlugin,
    RoutingPlugin,
)

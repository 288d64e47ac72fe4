"""Settings of the gateway service; each plugin reads its own section under `plugins.<name>`."""

from __future__ import annotations

from pydantic import Field

from gateway.connections import ConnectionLimits
from keelson.config import KeelsonSettings

__all__ = ["Settings"]


class Settings(KeelsonSettings):
    service: str = "gateway"
    port: int = 8000
    # How many reverse proxies (ingress, load balancer) sit in front and append to
    # X-Forwarded-For; 0 means the socket peer is the client and incoming XFF is ignored.
    # With `trusted_proxies` set, X-Forwarded-For is believed only from those peers (the
    # edge's address); from any other peer the peer is the client.
    trusted_proxy_hops: int = Field(0, ge=0, le=10)
    # The access_log plugin writes the gateway's access log ("gateway.access").
    access_log: bool = False
    # The public port's head, idle and body timeouts and head size cap (gateway.connections).
    connections: ConnectionLimits = ConnectionLimits()

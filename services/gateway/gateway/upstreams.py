"""Upstream services: their config, the prefix table that picks one, and a breaker each."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

from gateway.circuit import CircuitBreaker, CircuitState
from gateway.metrics import CIRCUIT_STATE

__all__ = ["RouteTable", "RoutingConfig", "Upstream", "UpstreamConfig"]

_DEFAULT_UPSTREAMS: dict[str, dict[str, Any]] = {
    "auth": {
        "url": "http://127.0.0.1:8001",
        "prefixes": [
            "/api/v1/auth",
            "/.well-known/jwks.json",
            "/.well-known/oauth-authorization-server",
        ],
        "required": True,
    },
    "logs": {"url": "http://127.0.0.1:8002"},
    "notifications": {"url": "http://127.0.0.1:8003"},
    "payments": {"url": "http://127.0.0.1:8004"},
}
_CIRCUIT_GAUGE = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}


class UpstreamConfig(BaseModel):
    url: str
    prefixes: list[str]
    required: bool = False  # a required upstream out makes the gateway unready, not degraded
    timeout_seconds: float = Field(10.0, gt=0)
    connect_timeout_seconds: float = Field(2.0, gt=0)
    retries: int = Field(2, ge=0, le=10)
    retry_backoff_seconds: float = Field(0.05, ge=0)
    failure_threshold: int = Field(5, ge=1)
    reset_timeout_seconds: float = Field(10.0, gt=0)
    openapi_path: str = "/openapi.json"
    ready_path: str = "/health/ready"

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("upstream url must be http:// or https://")
        return value.rstrip("/")

    @field_validator("prefixes")
    @classmethod
    def _absolute(cls, value: list[str]) -> list[str]:
        if not value or any(not p.startswith("/") for p in value):
            raise ValueError("prefixes must be a non-empty list of absolute paths")
        return [p.rstrip("/") or "/" for p in value]


class RoutingConfig(BaseModel):
    upstreams: dict[str, UpstreamConfig] = {}
    pool_limit: int = Field(1024, ge=1)
    # Idle upstream connections are reused only this long: below the upstreams' own idle
    # timeout (uvicorn's is 5 s), so that an upstream seldom closes one just as it is used.
    keepalive_seconds: float = Field(4.0, gt=0)
    buffer_response_bytes: int = Field(256 * 1024, ge=0)
    replayable_request_bytes: int = Field(1024 * 1024, ge=0)
    openapi_refresh_seconds: float = Field(60.0, gt=0)
    readiness_cache_seconds: float = Field(2.0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _over_defaults(cls, data: Any) -> Any:
        """Config names only what differs: an upstream given just a `url` keeps its prefixes."""
        if not isinstance(data, dict):
            return data
        given = data.get("upstreams") or {}
        merged = {
            name: {"prefixes": [f"/api/v1/{name}"], **base}
            for name, base in _DEFAULT_UPSTREAMS.items()
        }
        for name, values in given.items():
            base = merged.get(name, {"prefixes": [f"/api/v1/{name}"]})
            merged[name] = {**base, **(values if isinstance(values, dict) else dict(values))}
        return {**data, "upstreams": merged}


@dataclass
class Upstream:
    name: str
    config: UpstreamConfig
    breaker: CircuitBreaker = field(init=False)

    @cached_property  # once per upstream, not per Location the proxy rewrites
    def origin(self) -> bytes:
        """`scheme://host[:port]` of the upstream, lower case, as it appears in its answers."""
        scheme, _, rest = self.config.url.partition("://")
        return f"{scheme}://{rest.split('/', 1)[0]}".lower().encode()

    def __post_init__(self) -> None:
        gauge = CIRCUIT_STATE.labels(self.name)
        gauge.set(0)
        self.breaker = CircuitBreaker(
            failure_threshold=self.config.failure_threshold,
            reset_timeout=self.config.reset_timeout_seconds,
            on_change=lambda state: gauge.set(_CIRCUIT_GAUGE[state]),
        )


class RouteTable:
    """Longest prefix wins; a prefix matches itself and what follows a `/` after it."""

    def __init__(self, upstreams: dict[str, Upstream]) -> None:
        self.upstreams = upstreams
        entries = [(p, u) for u in upstreams.values() for p in u.config.prefixes]
        self._entries = sorted(entries, key=lambda e: len(e[0]), reverse=True)

    def match(self, path: str) -> Upstream | None:
        for prefix, upstream in self._entries:
            if path.startswith(prefix) and (
                len(path) == len(prefix) or path[len(prefix)] == "/" or prefix == "/"
            ):
                return upstream
        return None

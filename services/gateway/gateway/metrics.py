"""The gateway's own Prometheus series: upstreams, circuits, rate limits, validation."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from keelson.metrics import BUCKETS, LoopCounter, LoopHistogram

__all__ = [
    "CIRCUIT_REJECTIONS",
    "CIRCUIT_STATE",
    "RATE_LIMIT_OVERSHOOT",
    "RATE_LIMIT_REJECTIONS",
    "RATE_LIMIT_STORAGE_ERRORS",
    "UPSTREAM_REQUESTS",
    "UPSTREAM_REQUEST_SECONDS",
    "UPSTREAM_RETRIES",
    "VALIDATION_REJECTIONS",
]

# Counted on every proxied request, on the event loop's thread: without a lock.
UPSTREAM_REQUESTS = LoopCounter(
    "gateway_upstream_requests_total",
    "Requests forwarded to an upstream, by outcome",
    ["upstream", "method", "status"],
)
UPSTREAM_REQUEST_SECONDS = LoopHistogram(
    "gateway_upstream_request_duration_seconds",
    "Time until the upstream's response headers arrived",
    ["upstream"],
    buckets=BUCKETS,
)
UPSTREAM_RETRIES = Counter(
    "gateway_upstream_retries_total", "Idempotent requests retried", ["upstream"]
)
CIRCUIT_STATE = Gauge(
    "gateway_circuit_state",
    "Circuit state per upstream: 0 closed, 1 half-open, 2 open",
    ["upstream"],
)
CIRCUIT_REJECTIONS = Counter(
    "gateway_circuit_rejections_total", "Requests refused by an open circuit", ["upstream"]
)
RATE_LIMIT_REJECTIONS = Counter(
    "gateway_rate_limit_rejections_total", "Requests refused with 429", ["rule"]
)
RATE_LIMIT_OVERSHOOT = Counter(
    "gateway_rate_limit_overshoot_total",
    "Requests admitted ahead of the store's answer that the store then refused",
    ["rule"],
)
RATE_LIMIT_STORAGE_ERRORS = Counter(
    "gateway_rate_limit_storage_errors_total",
    "Rate-limit storage failures, by what the gateway did (allowed or refused)",
    ["outcome"],
)
VALIDATION_REJECTIONS = Counter(
    "gateway_validation_rejections_total", "Requests refused by validation", ["reason"]
)

"""Prometheus metrics: RED per route, and the `/metrics` endpoint."""

from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "BUS_DEAD_LETTERS",
    "BUS_HANDLED",
    "BUS_LAG",
    "DB_QUERY_SECONDS",
    "HTTP_IN_FLIGHT",
    "HTTP_REQUESTS",
    "HTTP_REQUEST_SECONDS",
    "LOG_RECORDS_DROPPED",
    "LOG_RECORDS_SPILLED",
    "MetricsMiddleware",
    "metrics_router",
]

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

HTTP_REQUESTS = Counter(
    "http_requests_total", "HTTP requests", ["service", "method", "route", "status"]
)
HTTP_REQUEST_SECONDS = Histogram(
    "http_request_duration_seconds",
    "HTTP request duration",
    ["service", "method", "route"],
    buckets=_BUCKETS,
)
HTTP_IN_FLIGHT = Gauge("http_requests_in_flight", "HTTP requests in flight", ["service"])
DB_QUERY_SECONDS = Histogram(
    "db_query_duration_seconds", "Database statement duration", ["service"], buckets=_BUCKETS
)
DB_POOL_IN_USE = Gauge("db_pool_connections_in_use", "Checked-out DB connections", ["service"])
BUS_HANDLED = Counter(
    "bus_events_handled_total", "Bus events handled", ["topic", "group", "outcome"]
)
BUS_LAG = Gauge("bus_consumer_lag", "Entries not yet delivered to a group", ["stream", "group"])
BUS_DEAD_LETTERS = Counter("bus_dead_letters_total", "Events moved to dead letter", ["topic"])
LOG_RECORDS_DROPPED = Counter(
    "log_records_dropped_total", "Log records dropped by the shipper", ["reason"]
)
LOG_RECORDS_SPILLED = Counter("log_records_spilled_total", "Log records spilled to disk")


class MetricsMiddleware:
    """RED metrics keyed by the route template, so `/users/42` and `/users/7` share a series."""

    def __init__(self, app: ASGIApp, *, service: str) -> None:
        self.app = app
        self.service = service
        self.in_flight = HTTP_IN_FLIGHT.labels(service)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/metrics":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.in_flight.inc()
        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.in_flight.dec()
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            HTTP_REQUESTS.labels(self.service, method, template, str(status)).inc()
            HTTP_REQUEST_SECONDS.labels(self.service, method, template).observe(
                time.perf_counter() - start
            )


def metrics_router(registry: CollectorRegistry = REGISTRY) -> APIRouter:
    router = APIRouter(tags=["metrics"])

    @router.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router

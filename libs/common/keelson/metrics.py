"""Prometheus metrics: RED per route, DB pool and queries, bus, business counters, `/metrics`."""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Iterator
from typing import TypeVar

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
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine
from sqlalchemy.pool import QueuePool
from starlette.types import Scope

__all__ = [
    "BUSINESS_EVENTS",
    "BUS_DEAD_LETTERS",
    "BUS_HANDLED",
    "BUS_LAG",
    "DB_QUERY_SECONDS",
    "HTTP_IN_FLIGHT",
    "HTTP_REQUESTS",
    "HTTP_REQUEST_SECONDS",
    "LOG_RECORDS_DROPPED",
    "LOG_RECORDS_SPILLED",
    "RequestMetrics",
    "cached_labels",
    "count_business_event",
    "metrics_router",
    "route_template",
    "track_db_pool",
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
BUS_HANDLED = Counter(
    "bus_events_handled_total", "Bus events handled", ["topic", "group", "outcome"]
)
BUS_LAG = Gauge("bus_consumer_lag", "Entries not yet delivered to a group", ["stream", "group"])
BUS_DEAD_LETTERS = Counter("bus_dead_letters_total", "Events moved to dead letter", ["topic"])
LOG_RECORDS_DROPPED = Counter(
    "log_records_dropped_total", "Log records dropped by the shipper", ["reason"]
)
LOG_RECORDS_SPILLED = Counter("log_records_spilled_total", "Log records spilled to disk")
BUSINESS_EVENTS = Counter(
    "business_events_total",
    "Business events (sign-ups, payments, deliveries, ...) by outcome",
    ["service", "event", "outcome"],
)


M = TypeVar("M", Counter, Gauge, Histogram)


def cached_labels(metric: M, maxsize: int = 4096) -> Callable[..., M]:
    """`metric.labels(*values)` with its children kept (values are turned into `str`).

    `labels()` takes a lock and builds its key on every call, and a metric's label sets are
    few (route templates, upstreams, statuses): the children are worth keeping, and
    `maxsize` bounds them should a label ever take unbounded values.
    """

    # typed: 1, 1.0 and True are one key to a dict but three labels ("1", "1.0", "True").
    @functools.lru_cache(maxsize=maxsize, typed=True)
    def child(*values: object) -> M:
        return metric.labels(*(str(value) for value in values))

    return child


_business_child = cached_labels(BUSINESS_EVENTS, 1024)


def count_business_event(service: str, event: str, *, outcome: str = "ok", n: int = 1) -> None:
    """Count `n` business events, e.g. `("payments", "payment", outcome="succeeded")`.

    Keep `event` and `outcome` to a small fixed set (never ids or emails): each
    combination is a time series.
    """
    _business_child(service, event, outcome).inc(n)


class _PoolCollector(Collector):
    """Reads each tracked engine's pool at scrape time, so the figures cannot drift."""

    def __init__(self) -> None:
        self._engines: weakref.WeakKeyDictionary[Engine, str] = weakref.WeakKeyDictionary()

    def track(self, engine: Engine, service: str) -> None:
        self._engines[engine] = service

    def collect(self) -> Iterator[Metric]:
        families = {
            "in_use": GaugeMetricFamily(
                "db_pool_connections_in_use", "DB connections checked out", labels=["service"]
            ),
            "idle": GaugeMetricFamily(
                "db_pool_connections_idle", "DB connections open and idle", labels=["service"]
            ),
            "size": GaugeMetricFamily(
                "db_pool_size", "DB connections the pool keeps (pool_size)", labels=["service"]
            ),
            "overflow": GaugeMetricFamily(
                "db_pool_overflow_connections",
                "DB connections open beyond pool_size (max_overflow bounds them)",
                labels=["service"],
            ),
        }
        totals: dict[str, dict[str, float]] = {}
        for engine, service in list(self._engines.items()):
            pool = engine.pool  # read now: dispose() swaps in a new pool
            if not isinstance(pool, QueuePool):
                continue
            row = totals.setdefault(service, dict.fromkeys(families, 0.0))
            row["in_use"] += pool.checkedout()
            row["idle"] += pool.checkedin()
            row["size"] += pool.size()
            row["overflow"] += max(0, pool.overflow())
        for service, row in totals.items():
            for name, family in families.items():
                family.add_metric([service], row[name])
        yield from families.values()


_POOLS = _PoolCollector()
REGISTRY.register(_POOLS)


def track_db_pool(engine: Engine, service: str) -> None:
    """Report `engine`'s pool as `db_pool_*{service=...}` for as long as the engine lives."""
    _POOLS.track(engine, service)


def route_template(scope: Scope) -> str:
    """The template of the route that served `scope` (`/users/{id}`), or "unmatched"."""
    return getattr(scope.get("route"), "path", None) or "unmatched"


class RequestMetrics:
    """RED metrics keyed by the route template, so `/users/42` and `/users/7` share a series."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._requests = cached_labels(HTTP_REQUESTS)
        self._seconds = cached_labels(HTTP_REQUEST_SECONDS)

    def observe(self, scope: Scope, status: int, seconds: float) -> None:
        """Count one answered request of `scope` and its duration."""
        method, template = scope["method"], route_template(scope)
        self._requests(self.service, method, template, status).inc()
        self._seconds(self.service, method, template).observe(seconds)


def metrics_router(registry: CollectorRegistry = REGISTRY) -> APIRouter:
    router = APIRouter(tags=["metrics"])

    @router.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router

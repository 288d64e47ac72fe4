"""Prometheus metrics: RED per route, DB pool and queries, bus, business counters, `/metrics`."""

from __future__ import annotations

import functools
import time
import weakref
from abc import abstractmethod
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

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
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine
from sqlalchemy.pool import QueuePool
from starlette.types import Scope

__all__ = [
    "BUCKETS",
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
    "LoopCounter",
    "LoopHistogram",
    "RequestMetrics",
    "cached_labels",
    "count_business_event",
    "method_label",
    "metrics_router",
    "route_template",
    "track_db_pool",
]

# Seconds: from a millisecond to ten.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _Count:
    """One label set's count."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self.value += amount


class _Observations:
    """One label set's histogram: a count per bucket (not cumulative), and the sum."""

    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        # The first bucket whose bound is at least the sample (Prometheus' `le`).
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount


Child = TypeVar("Child", _Count, _Observations)


class _LoopMetric(Collector, Generic[Child]):
    """A metric family whose children count without a lock; see `LoopCounter`."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry | None,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[object, ...], Child] = {}  # by the values given
        self._series: dict[tuple[str, ...], Child] = {}  # by their text: one series each
        if registry is not None:
            registry.register(self)

    def labels(self, *values: object) -> Child:
        """The child for these label values (each turned into `str`), made on first use.

        Values that are equal as dict keys (1, 1.0 and True) share the child of the first
        one seen: keep a label to one type.
        """
        child = self._children.get(values)
        if child is None:
            child = self._add(values)
        return child

    def _add(self, values: tuple[object, ...]) -> Child:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} has labels {self.labelnames}, not {values!r}")
        text = tuple(str(value) for value in values)
        child = self._series.get(text)
        if child is None:
            child = self._series[text] = self._new_child()
        self._children[values] = child
        return child

    @abstractmethod
    def _new_child(self) -> Child:
        """A child for one new label set."""

    def _copy(self) -> list[tuple[tuple[str, ...], Child]]:
        # One C call under the GIL: a scrape on another thread cannot see the dict grow.
        return list(self._series.items())


class LoopCounter(_LoopMetric[_Count]):
    """A Prometheus counter whose children are counted without a lock, for series counted
    on one thread only: a service's request metrics, counted by `ServiceMiddleware` on the
    event loop's thread.

    prometheus_client's `Counter` takes a lock on every `inc` (any thread may count), which
    on the request path costs four times the count itself. This is a custom collector
    (prometheus_client's documented extension point): registered, scraped and exposed as
    a `Counter` with the same name and labels is (`<name>_total`, `<name>_created`). A
    scrape from another thread reads each value whole, never torn.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        super().__init__(name.removesuffix("_total"), documentation, labelnames, registry)

    def _new_child(self) -> _Count:
        return _Count()

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, child in self._copy():
            family.add_metric(labels, child.value, created=child.created)
        yield family


class LoopHistogram(_LoopMetric[_Observations]):
    """A Prometheus histogram whose children observe without a lock, on one thread only
    (see `LoopCounter`); exposed as a `Histogram` with the same name, labels and buckets
    is (`_bucket` with `le`, `_count`, `_sum`, `_created`)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        bounds = tuple(float(bound) for bound in buckets if bound != float("inf"))
        if not bounds or list(bounds) != sorted(set(bounds)):
            raise ValueError("a histogram needs finite buckets in increasing order")
        if bounds[0] <= 0 or bounds[-1] >= 1e6:
            # Prometheus writes `le` as Go formats a float, which is Python's repr for these.
            raise ValueError("bucket bounds must lie between 0 and 1,000,000")
        if "le" in labelnames:
            raise ValueError("`le` is the histogram's own label")
        self.bounds = bounds
        self._le = [repr(bound) for bound in bounds] + ["+Inf"]
        super().__init__(name, documentation, labelnames, registry)

    def _new_child(self) -> _Observations:
        return _Observations(self.bounds)

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, child in self._copy():
            counts, total = child.counts.copy(), child.sum
            cumulative = 0
            buckets = []
            for le, count in zip(self._le, counts, strict=True):
                cumulative += count
                buckets.append((le, float(cumulative)))
            family.add_metric(labels, buckets, total)
            family.add_sample(
                self.name + "_created",
                dict(zip(self.labelnames, labels, strict=True)),
                child.created,
            )
        yield family


HTTP_REQUESTS = LoopCounter(
    "http_requests_total", "HTTP requests", ["service", "method", "route", "status"]
)
HTTP_REQUEST_SECONDS = LoopHistogram(
    "http_request_duration_seconds",
    "HTTP request duration",
    ["service", "method", "route"],
    buckets=BUCKETS,
)
HTTP_IN_FLIGHT = Gauge("http_requests_in_flight", "HTTP requests in flight", ["service"])
DB_QUERY_SECONDS = Histogram(
    "db_query_duration_seconds", "Database statement duration", ["service"], buckets=BUCKETS
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


# RFC 9110, 9.3 (and PATCH, RFC 5789): the methods counted under their own name.
_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)


def method_label(method: str) -> str:
    """`method` as a metric label: itself if RFC 9110 defines it, else `OTHER`."""
    return method if method in _METHODS else "OTHER"


class RequestMetrics:
    """RED metrics keyed by the route template, so `/users/42` and `/users/7` share a series."""

    def __init__(self, service: str) -> None:
        self.service = service

    def observe(self, scope: Scope, status: int, seconds: float) -> None:
        """Count one answered request of `scope` and its duration; a method RFC 9110 does
        not define is counted as `OTHER` (a client choosing methods must not be able to
        grow the series without bound)."""
        method, template = method_label(scope["method"]), route_template(scope)
        HTTP_REQUESTS.labels(self.service, method, template, status).inc()
        HTTP_REQUEST_SECONDS.labels(self.service, method, template).observe(seconds)


def metrics_router(registry: CollectorRegistry = REGISTRY) -> APIRouter:
    router = APIRouter(tags=["metrics"])

    @router.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router

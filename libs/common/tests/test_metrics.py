"""keelson.metrics' lock-free counter and histogram: exposed as prometheus_client's own."""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from keelson.metrics import BUCKETS, LoopCounter, LoopHistogram

Expose = Callable[[CollectorRegistry], bytes]
_CREATED = re.compile(rb"(_created\{[^}]*\}) \S+")


def _without_created_times(text: bytes) -> bytes:
    return _CREATED.sub(rb"\1 T", text)


def _pair() -> tuple[CollectorRegistry, CollectorRegistry]:
    return CollectorRegistry(), CollectorRegistry()


@pytest.mark.parametrize("expose", [generate_latest, generate_openmetrics])
def test_a_loop_counter_is_exposed_as_a_counter_is(expose: Expose) -> None:
    stock_registry, loop_registry = _pair()
    stock = Counter("t_requests_total", "Requests", ["route", "status"], registry=stock_registry)
    loop = LoopCounter("t_requests_total", "Requests", ["route", "status"], registry=loop_registry)
    for route, status, amount in [("/a", 200, 1), ("/a", 200, 2.5), ("/b", 404, 1)]:
        stock.labels(route, status).inc(amount)
        loop.labels(route, status).inc(amount)
    loop.labels("/a", "200").inc()  # the same series as ("/a", 200)
    stock.labels("/a", "200").inc()

    assert _without_created_times(expose(loop_registry)) == _without_created_times(
        expose(stock_registry)
    )
    assert (
        loop_registry.get_sample_value("t_requests_total", {"route": "/a", "status": "200"}) == 4.5
    )


@pytest.mark.parametrize("expose", [generate_latest, generate_openmetrics])
def test_a_loop_histogram_is_exposed_as_a_histogram_is(expose: Expose) -> None:
    stock_registry, loop_registry = _pair()
    stock = Histogram("t_seconds", "Duration", ["route"], buckets=BUCKETS, registry=stock_registry)
    loop = LoopHistogram(
        "t_seconds", "Duration", ["route"], buckets=BUCKETS, registry=loop_registry
    )
    # On a bound, between bounds, below the first and above the last.
    samples = [0.001, 0.0011, 0.0, 0.7, 10.0, 11.0, 0.05]
    for value in samples:
        stock.labels("/a").observe(value)
        loop.labels("/a").observe(value)
    loop.labels("/b").observe(0.2)
    stock.labels("/b").observe(0.2)

    assert _without_created_times(expose(loop_registry)) == _without_created_times(
        expose(stock_registry)
    )
    assert loop_registry.get_sample_value("t_seconds_bucket", {"route": "/a", "le": "0.001"}) == 2
    assert loop_registry.get_sample_value("t_seconds_count", {"route": "/a"}) == len(samples)


def test_a_loop_metric_refuses_a_wrong_number_of_labels_and_a_taken_name() -> None:
    registry = CollectorRegistry()
    counter = LoopCounter("t_total", "T", ["a", "b"], registry=registry)
    with pytest.raises(ValueError, match="labels"):
        counter.labels("only one")
    with pytest.raises(ValueError, match="only goes up"):
        counter.labels("a", "b").inc(-1)
    for buckets in [(1.0, 0.5), (0.5, 0.5), (0.0, 1.0), (1.0, 2e6), ()]:
        with pytest.raises(ValueError, match="bucket"):
            LoopHistogram("t_seconds", "T", [], buckets=buckets, registry=None)
    with pytest.raises(ValueError, match="le"):
        LoopHistogram("t_seconds", "T", ["le"], buckets=(1.0,), registry=None)
    with pytest.raises(ValueError, match="Duplicated"):
        Counter("t_total", "T", ["a"], registry=registry)


def test_a_scrape_on_another_thread_sees_whole_series_while_they_are_added() -> None:
    registry = CollectorRegistry()
    histogram = LoopHistogram("t_seconds", "T", ["route"], buckets=BUCKETS, registry=registry)
    stop = threading.Event()
    failures: list[BaseException] = []

    def scrape() -> None:
        while not stop.is_set():
            try:
                for family in registry.collect():
                    assert family.name == "t_seconds"
            except BaseException as exc:  # handed to the test's thread
                failures.append(exc)
                return

    scraper = threading.Thread(target=scrape)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns every few bytecodes, not every 5 ms
    scraper.start()
    try:
        for i in range(20_000):
            histogram.labels(f"/r{i}").observe(0.01)
    finally:
        stop.set()
        scraper.join()
        sys.setswitchinterval(interval)
    assert not failures
    assert registry.get_sample_value("t_seconds_count", {"route": "/r7"}) == 1

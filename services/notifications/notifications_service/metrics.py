"""Prometheus metrics of deliveries: outcomes per channel, latency and the queue's depth."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from keelson.metrics import cached_labels

__all__ = ["DEAD_LETTERED", "DELIVERY_SECONDS", "FAILED", "QUEUE_DEPTH", "SENT", "SUPPRESSED"]

SENT = cached_labels(Counter("notifications_sent_total", "Notifications delivered", ["channel"]))
FAILED = cached_labels(
    Counter(
        "notifications_failed_total",
        "Delivery attempts that failed (transient or permanent)",
        ["channel", "kind"],
    )
)
DEAD_LETTERED = cached_labels(
    Counter("notifications_dead_lettered_total", "Notifications moved to dead letter", ["channel"])
)
SUPPRESSED = cached_labels(
    Counter(
        "notifications_suppressed_total", "Notifications the recipient opted out of", ["channel"]
    )
)
DELIVERY_SECONDS = cached_labels(
    Histogram(
        "notifications_delivery_seconds",
        "From a notification's creation to its delivery",
        ["channel"],
        buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
    )
)
QUEUE_DEPTH = Gauge("notifications_queue_depth", "Notifications waiting to be sent (due or not)")

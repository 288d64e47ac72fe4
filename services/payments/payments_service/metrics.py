"""Business metrics of the payments service (provider calls are timed in keelson.payment)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

__all__ = [
    "INTENT_TRANSITIONS",
    "RECONCILE_REPAIRS",
    "REFUNDS",
    "WEBHOOK_EVENTS",
    "WEBHOOK_LAG",
]

INTENT_TRANSITIONS = Counter(
    "payments_intents_total", "Payment intents entering each status", ["status"]
)
REFUNDS = Counter(
    "payments_refunds_total",
    "Refunds made (committed), by the provider's status of the refund",
    ["status"],
)
WEBHOOK_EVENTS = Counter(
    "payments_webhook_events_total",
    "Provider webhook events by type and outcome "
    "(applied, stale, duplicate, unknown_intent, ignored, rejected)",
    ["type", "outcome"],
)
WEBHOOK_LAG = Histogram(
    "payments_webhook_lag_seconds",
    "From the provider creating an event to it being handled here",
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600, 86400),
)
RECONCILE_REPAIRS = Counter(
    "payments_reconcile_repairs_total", "Intent states repaired by reconciliation"
)

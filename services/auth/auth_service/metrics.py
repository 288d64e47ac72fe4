"""The auth service's business events, counted where they happen.

They go to Keelson's shared `business_events_total{service="auth", event, outcome}`, the
series the dashboards read for every service. Each combination is created at zero on
import, so a rate over it answers 0 (not "no data") before the first event.
"""

from __future__ import annotations

from keelson.metrics import count_business_event

__all__ = ["EVENTS", "count"]

# event -> its outcomes (a fixed set: never ids or emails)
EVENTS: dict[str, tuple[str, ...]] = {
    "registration": ("ok",),
    "login": ("success", "failure", "locked"),
    "refresh": ("success", "failure"),
    "refresh_reuse": ("detected",),
}

for _event, _outcomes in EVENTS.items():
    for _outcome in _outcomes:
        count_business_event("auth", _event, outcome=_outcome, n=0)


def count(event: str, outcome: str) -> None:
    """Count one `event` of the auth service with `outcome` (one of `EVENTS[event]`)."""
    if outcome not in EVENTS[event]:
        raise ValueError(f"unknown outcome {outcome!r} of {event!r}")
    count_business_event("auth", event, outcome=outcome)

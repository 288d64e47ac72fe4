"""Business metrics of the payments service (provider calls are timed in keelson.payment).

`payments_intents{status}` is the number of intents in each status now, counted in the
database every `payments.intent_count_interval_seconds` by `IntentCounter` (every replica
counts the same table, so a dashboard takes `max`, not `sum`, across replicas).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keelson.tasks import finish_or_cancel
from payments_service.models import Intent
from payments_service.states import IntentStatus

__all__ = [
    "INTENTS",
    "RECONCILE_REPAIRS",
    "REFUNDS",
    "WEBHOOK_BATCH",
    "WEBHOOK_EVENTS",
    "WEBHOOK_LAG",
    "IntentCounter",
]

_log = logging.getLogger("payments_service.metrics")

INTENTS = Gauge(
    "payments_intents", "Payment intents in each status now (counted in the database)", ["status"]
)
REFUNDS = Counter(
    "payments_refunds_total",
    "Refunds made (committed), by the provider's status of the refund",
    ["status"],
)
WEBHOOK_EVENTS = Counter(
    "payments_webhook_events_total",
    "Provider webhook events by type and outcome "
    "(applied, recorded, stale, duplicate, unknown_intent, ignored, rejected)",
    ["type", "outcome"],
)
WEBHOOK_LAG = Histogram(
    "payments_webhook_lag_seconds",
    "From the provider creating an event to it being handled here",
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600, 86400),
)
WEBHOOK_BATCH = Histogram(
    "payments_webhook_batch_events",
    "Webhook events applied per transaction (group commit; 1 when requests come one by one)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
RECONCILE_REPAIRS = Counter(
    "payments_reconcile_repairs_total", "Intent states repaired by reconciliation"
)


class IntentCounter:
    """Sets `payments_intents` from one GROUP BY over the intents, now and every interval."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], interval: float) -> None:
        self.sessions = sessions
        self.interval = interval
        self.last_error: str | None = None
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def count_once(self) -> dict[IntentStatus, int]:
        async with self.sessions() as db:
            rows = await db.execute(select(Intent.status, func.count()).group_by(Intent.status))
            found = {IntentStatus(status): int(n) for status, n in rows}
        for status in IntentStatus:  # a status with no intent left reads 0, not its old count
            INTENTS.labels(status.value).set(found.get(status, 0))
        return found

    def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="payments-intent-counts")

    async def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self._task is not None:
            await finish_or_cancel(self._task, timeout)
            self._task = None

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.count_once()
                self.last_error = None
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                _log.warning("counting payment intents failed: %s", self.last_error)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._stopping.wait()

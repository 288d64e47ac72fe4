"""Reconciliation: intents whose webhooks went missing are repaired from the provider's view.

One replica at a time runs a pass: it holds a transaction-level advisory lock for the
whole pass, and the others, failing to take it, skip their turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keelson.payment import PaymentProvider, ProviderIntent
from keelson.tasks import finish_or_cancel
from payments_service.lifecycle import Changes, move
from payments_service.metrics import RECONCILE_REPAIRS
from payments_service.models import Intent
from payments_service.settings import PaymentsSettings
from payments_service.states import IntentStatus, status_of

__all__ = ["RECONCILE_LOCK", "Reconciler"]

RECONCILE_LOCK = "keelson.payments.reconcile"
_log = logging.getLogger("payments_service.reconcile")


class Reconciler:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        provider: PaymentProvider,
        settings: PaymentsSettings,
    ) -> None:
        self.sessions = sessions
        self.provider = provider
        self.settings = settings
        self.passes = 0
        self.last_error: str | None = None
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def reconcile_once(self) -> int | None:
        """Repair what the provider knows better; the number repaired, None if not leader."""
        async with self.sessions() as db, db.begin():
            leader = await db.scalar(
                text("SELECT pg_try_advisory_xact_lock(hashtext(:lock))"), {"lock": RECONCILE_LOCK}
            )
            if not leader:
                return None
            since = int(time.time()) - self.settings.reconcile_window_seconds
            remote = await self.provider.list_intents(
                since=since, limit=self.settings.reconcile_max_intents
            )
            repaired = 0
            for seen in remote:
                if await self._repair(db, seen):
                    repaired += 1
        RECONCILE_REPAIRS.inc(repaired)
        return repaired

    @staticmethod
    async def _repair(db: AsyncSession, seen: ProviderIntent) -> bool:
        intent = await db.scalar(
            select(Intent).where(Intent.provider_id == seen.id).with_for_update()
        )
        if intent is None:
            return False
        target = status_of(seen)
        changes = Changes(intent)
        moved = move(
            changes,
            target,
            source="reconciliation",
            reason=seen.decline_code,
            data={"provider_status": seen.status},
        )
        if moved and target is IntentStatus.SUCCEEDED:
            changes.set(amount_received=min(seen.amount_received or seen.amount, intent.amount))
        await changes.write(db)
        return moved

    def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="payments-reconcile")

    async def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self._task is not None:
            await finish_or_cancel(self._task, timeout)
            self._task = None

    async def _run(self) -> None:
        # The first pass, too, comes one interval after start: a rolling deploy restarts
        # replicas often, and each restart is no reason to list the provider's intents.
        while not await self._wait_interval():
            try:
                repaired = await self.reconcile_once()
                self.last_error = None
                if repaired:
                    _log.info("reconciliation repaired %d payment intents", repaired)
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                _log.warning("reconciliation failed: %s", self.last_error)
            self.passes += 1

    async def _wait_interval(self) -> bool:
        """Wait one interval; True when asked to stop meanwhile."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.reconcile_interval_seconds):
                await self._stopping.wait()
        return self._stopping.is_set()

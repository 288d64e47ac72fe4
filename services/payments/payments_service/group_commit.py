"""Group commit: webhook events from concurrent requests applied in shared transactions.

A request hands its verified event to `GroupCommit.apply` and waits. One task applies
what is waiting as one batch (`handle_events`: one transaction, two statements, one
commit) and answers each request after the commit, so a 200 still means durable; what
arrives meanwhile waits for the next batch. One request alone is a batch of one, with
no added wait: batches grow only while a commit is under way. A batch that fails is
applied again one event per transaction, so a bad event fails alone. A request gone
before its batch starts is dropped from it (its sender will deliver it again).
The batches of one run (until nothing waits) share a connection: one pool checkout and
pre-ping for the run, not one per batch.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from keelson.payment import ProviderEvent
from keelson.tasks import finish_or_cancel
from payments_service.metrics import WEBHOOK_BATCH
from payments_service.webhooks import Delivery, Outcome, handle_events

__all__ = ["GroupCommit"]

_log = logging.getLogger("payments_service.group_commit")

_Waiting = tuple[Delivery, "asyncio.Future[Outcome]"]


class GroupCommit:
    """Applies waiting deliveries together, at most `max_batch` per transaction."""

    def __init__(
        self,
        engine: AsyncEngine,
        sessions: async_sessionmaker[AsyncSession],
        *,
        max_batch: int,
    ) -> None:
        self._engine = engine
        self._sessions = sessions
        self._max_batch = max_batch
        self._waiting: list[_Waiting] = []
        self._runner: asyncio.Task[None] | None = None

    async def apply(self, event: ProviderEvent, *, source: str) -> Outcome:
        """The event's outcome, once the transaction that applied it has committed."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiting.append((Delivery(event, source), future))
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name="payments.group_commit")
        return await future

    async def stop(self, timeout: float = 10.0) -> None:
        """Let the batches under way and waiting commit (bounded by `timeout`)."""
        if self._runner is not None:
            await finish_or_cancel(self._runner, timeout)

    async def _run(self) -> None:
        batch: list[_Waiting] = []
        try:
            # Outer loop: what arrived while the connection went back is not left waiting.
            while self._waiting:
                async with self._engine.connect() as conn:
                    while self._waiting:
                        batch = self._waiting[: self._max_batch]
                        del self._waiting[: self._max_batch]
                        batch = [(d, future) for d, future in batch if not future.done()]
                        if batch:
                            await self._commit(conn, batch)
        finally:
            self._runner = None
            # Cancelled at shutdown: no request waits for ever for a batch that won't run.
            for _, future in [*batch, *self._waiting]:
                future.cancel()
            self._waiting.clear()

    async def _commit(self, conn: AsyncConnection, batch: list[_Waiting]) -> None:
        WEBHOOK_BATCH.observe(len(batch))
        try:
            async with self._sessions(bind=conn) as db:
                outcomes = await handle_events(db, [delivery for delivery, _ in batch])
        except Exception as error:
            if len(batch) == 1:
                _answer(batch[0][1], error=error)
                return
            _log.warning(
                "a batch of %d webhook events failed; applying them one by one", len(batch)
            )
            for waiting in batch:
                await self._commit(conn, [waiting])
            return
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            _answer(future, outcome=outcome)


def _answer(
    future: asyncio.Future[Outcome],
    *,
    outcome: Outcome | None = None,
    error: BaseException | None = None,
) -> None:
    if future.done():  # its request was cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        assert outcome is not None
        future.set_result(outcome)

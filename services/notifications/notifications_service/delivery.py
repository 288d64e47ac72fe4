"""The delivery worker: claims due notifications, sends them, records every attempt.

A notification is a row before it is sent. The worker claims due rows per channel with
`FOR UPDATE SKIP LOCKED` (so replicas share the work), marking them `sending` until a
lease runs out, and sends at most `concurrency[channel]` at once. It claims ahead, up to
`claim_ahead` times that many per channel, so that the next rows are ready when a send
finishes and the next claim runs while the channel sends. It claims again when a channel
has room for `concurrency` more rows and its rows are probably due (its last claim was
full); when this process commits new rows (`wake`); and every `poll_interval_seconds`
(rows other replicas queued, retries falling due). Outcomes are written in
batches: sent; a transient error (timeout, 5xx, 429) schedules the next attempt in the
database with exponential backoff and jitter (so a restart loses no retry); a permanent
one (4xx, invalid address, template error) fails at once; a transient error on the last
attempt moves the row to dead letter and queues `notifications.delivery_failed`.
A process killed mid-send leaves its rows `sending`; they are claimed again when the
lease runs out, and the attempt counts. A row claimed ahead and not yet started when
the worker stops, or still waiting for a sender after half its lease, is given back
(pending, the attempt not counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, insert, select, text, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keelson import monitor
from keelson.events import NotificationDeliveryFailed
from keelson.outbox import add_to_outbox
from keelson.tasks import cancel_and_wait, finish_or_cancel
from notifications_service import metrics
from notifications_service.channels import Channel, DeliveryError, OutgoingMessage
from notifications_service.models import (
    Attempt,
    AttemptOutcome,
    Notification,
    Status,
    WebhookEndpoint,
)
from notifications_service.rendering import Composer, RenderError
from notifications_service.settings import DeliverySettings

__all__ = ["DeliveryWorker", "Outcome", "backoff_seconds"]

_log = logging.getLogger("notifications_service.delivery")
# Two arms, each a range scan of its own partial index that stops at the limit: leases
# that ran out (a worker died mid-send) first, then pending rows in the order they fell due.
_CLAIM = text(
    """
    WITH expired AS (
        SELECT id FROM notifications
         WHERE status = 'sending' AND lease_until < now()
           AND channel = ANY(CAST(:channels AS text[]))
         ORDER BY lease_until
         LIMIT :limit
         FOR UPDATE SKIP LOCKED
    ), due AS (
        SELECT id FROM notifications
         WHERE status = 'pending' AND next_attempt_at <= now()
           AND channel = ANY(CAST(:channels AS text[]))
         ORDER BY next_attempt_at
         LIMIT :limit
         FOR UPDATE SKIP LOCKED
    )
    UPDATE notifications AS n
       SET status = 'sending', attempts = n.attempts + 1,
           lease_until = now() + make_interval(secs => :lease), updated_at = now()
      FROM (SELECT id FROM expired UNION ALL SELECT id FROM due LIMIT :limit) AS claimed
     WHERE n.id = claimed.id
    RETURNING n.id, n.owner_id, n.channel, n.recipient, n.webhook_endpoint_id, n.template,
              n.subject, n.body, n.data, n.locale, n.category, n.transactional,
              n.attempts, n.created_at, n.source_event_id
    """
)
# A queue's row estimates lag behind a burst (a handful of due rows at the last ANALYZE,
# thousands now), and with them Postgres chose to read every due row and sort them, for
# each claim; with sorts off it reads the partial indexes in order. For the claim only.
#
# The claim need not be durable: one lost with Postgres's last moments leaves its rows
# pending, to be sent as if their lease had run out (and a sent mark, which is durable,
# flushes the claim's record before it). So the claim does not wait for the disk.
_CLAIM_SETTINGS = text(
    "SELECT set_config('enable_sort', 'off', true), set_config('synchronous_commit', 'off', true)"
)
_RELEASE = text(
    """
    UPDATE notifications AS n
       SET status = 'pending', attempts = n.attempts - 1, lease_until = NULL, updated_at = now()
      FROM unnest(CAST(:ids AS uuid[]), CAST(:attempts AS int[])) AS d(id, attempts)
     WHERE n.id = d.id AND n.attempts = d.attempts AND n.status = 'sending'
    """
)
_MARK_SENT = text(
    """
    UPDATE notifications AS n
       SET status = 'sent', sent_at = now(), lease_until = NULL, last_error = NULL,
           updated_at = now()
      FROM unnest(CAST(:ids AS uuid[]), CAST(:attempts AS int[])) AS d(id, attempts)
     WHERE n.id = d.id AND n.attempts = d.attempts AND n.status = 'sending'
    """
)


def backoff_seconds(attempt: int, settings: DeliverySettings, retry_after: float | None) -> float:
    """Exponential in the attempt number, with jitter; a provider's Retry-After wins if longer."""
    ceiling = min(settings.backoff_max_seconds, settings.backoff_base_seconds * 2 ** (attempt - 1))
    delay = random.uniform(ceiling / 2, ceiling)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


@dataclass(slots=True)
class Outcome:
    row: Row[Any]
    error: DeliveryError | None
    code: int | None
    duration_ms: int
    released: bool = False  # not sent: the worker stopped, or the lease ran low, before its turn


class DeliveryWorker:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        channels: Mapping[str, Channel],
        composer: Composer,
        settings: DeliverySettings,
        *,
        producer: str = "notifications",
    ) -> None:
        self.sessions = sessions
        self.channels = dict(channels)
        self.composer = composer
        self.settings = settings
        self.producer = producer
        self._slots = {name: settings.concurrency.get(name, 4) for name in self.channels}
        self._senders = {name: asyncio.Semaphore(n) for name, n in self._slots.items()}
        self._claimed = dict.fromkeys(self.channels, 0)  # claimed and not yet finished
        # Per channel: more rows are probably due (its last claim was full, or rows were
        # queued since); a wake-up claims for these only, the poll for every channel.
        self._backlog = dict.fromkeys(self.channels, True)
        self._queued = 0  # `wake` calls so far
        self._fresh = False  # `wake` was called since the last claim
        self._wake = asyncio.Event()
        self._results: asyncio.Queue[Outcome] = asyncio.Queue()
        self._inflight: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._next_depth = 0.0
        self.last_error: str | None = None

    @property
    def alive(self) -> bool:
        return bool(self._tasks) and all(not t.done() for t in self._tasks)

    def wake(self, channels: Iterable[str] | None = None) -> None:
        """Look for due rows now: rows of these channels (None: of any) were just committed
        in this process."""
        self._queued += 1
        self._fresh = True
        for channel in self.channels if channels is None else channels:
            if channel in self._backlog:
                self._backlog[channel] = True
        self._wake.set()

    def start(self) -> None:
        self._stopping = False
        self._tasks = [
            asyncio.create_task(self._claim_loop(), name="notifications-claim"),
            asyncio.create_task(self._record_loop(), name="notifications-record"),
        ]

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming, let the sends in flight finish, record them, then stop.

        Neither the claim nor a recording is cancelled halfway: a claim committed but not
        yet handed to senders, or outcomes taken off the queue but not written, would
        leave rows leased to no one (sent again after the lease, some of them).
        """
        self._stopping = True
        self._wake.set()
        if self._tasks:
            await finish_or_cancel(self._tasks[0], timeout)
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=timeout)
        await cancel_and_wait(*self._inflight)
        if len(self._tasks) > 1:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._results.join()
            await cancel_and_wait(self._tasks[1])
        await self._record_pending()
        self._tasks = []

    async def _claim_loop(self) -> None:
        backoff, polled = 0.1, True
        while not self._stopping:
            self._wake.clear()
            self._fresh = False
            try:
                full = await self.claim_and_send(every_channel=polled)
                await self._update_depth()
                self.last_error, backoff, polled = None, 0.1, False
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                _log.warning("claiming notifications failed, retrying: %s", self.last_error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            if full:
                continue
            try:
                async with asyncio.timeout(self.settings.poll_interval_seconds):
                    await self._wake.wait()
            except TimeoutError:
                polled = True
            if self._fresh:
                # Rows are committed a transaction at a time: gather a few into one claim.
                await asyncio.sleep(self.settings.claim_delay_seconds)

    def _room(self, channel: str) -> int:
        return self.settings.claim_ahead * self._slots[channel] - self._claimed[channel]

    def _wants_rows(self, channel: str) -> bool:
        """Room for as many as it sends at once: claim now, in a batch, not row by row."""
        return self._room(channel) >= self._slots[channel]

    async def claim_and_send(self, *, every_channel: bool = True) -> bool:
        """Claim, in one statement, what the channels have room for and start sending;
        with `every_channel` false, only for channels whose rows are probably due.

        True when the claim filled the room (more rows are probably due, and freed slots
        should claim again at once).
        """
        open_channels = [
            c for c in self.channels if self._wants_rows(c) and (every_channel or self._backlog[c])
        ]
        if not open_channels:
            return False
        room = sum(self._room(c) for c in open_channels)
        limit = min(room, self.settings.batch_size)
        queued = self._queued
        async with self.sessions() as db, db.begin():
            await db.execute(_CLAIM_SETTINGS)
            rows = (
                await db.execute(
                    _CLAIM,
                    {
                        "channels": open_channels,
                        "limit": limit,
                        "lease": self.settings.lease_seconds,
                    },
                )
            ).all()
        claimed_at = time.monotonic()
        for row in rows:
            self._claimed[row.channel] += 1
            task = asyncio.create_task(self._deliver(row, claimed_at))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        full = len(rows) == limit
        if full or queued == self._queued:  # rows queued during the claim may be unseen
            for channel in open_channels:
                self._backlog[channel] = full
        return full and limit < room

    async def _deliver(self, row: Row[Any], claimed_at: float) -> None:
        with monitor.isolated_scope(notification_id=str(row.id), channel=row.channel):
            await self._deliver_one(row, claimed_at)

    async def _deliver_one(self, row: Row[Any], claimed_at: float) -> None:
        started = time.perf_counter()
        code: int | None = None
        error: DeliveryError | None = None
        monitor.add_breadcrumb(
            "delivery attempt", category="notification", channel=row.channel, attempt=row.attempts
        )
        try:
            message = await self._message(row)
            async with self._senders[row.channel]:
                # A row that waited half its lease for a sender goes back: sent later, its
                # lease could run out mid-send and the row be claimed (and sent) again.
                waited = time.monotonic() - claimed_at
                if self._stopping or waited > self.settings.lease_seconds / 2:
                    self._results.put_nowait(Outcome(row, None, None, 0, released=True))
                    return
                with monitor.trace(f"{row.channel}.send", op="notification.provider"):
                    code = await self.channels[row.channel].send(message)
        except DeliveryError as exc:
            error = exc
        except RenderError as exc:
            error = DeliveryError(str(exc), permanent=True)
        except Exception as exc:
            _log.exception("sending notification %s failed unexpectedly", row.id)
            error = DeliveryError(f"internal error: {type(exc).__name__}", permanent=False)
        finally:
            self._claimed[row.channel] -= 1
            if self._backlog[row.channel] and self._wants_rows(row.channel):
                self._wake.set()  # room for a batch, and rows are waiting for it
        duration = int((time.perf_counter() - started) * 1000)
        self._results.put_nowait(Outcome(row, error, code, duration))

    async def _message(self, row: Row[Any]) -> OutgoingMessage:
        message = self.composer.compose(
            id=str(row.id),
            recipient=row.recipient,
            template=row.template,
            subject=row.subject,
            body=row.body,
            data=row.data,
            locale=row.locale,
            category=row.category,
            transactional=row.transactional,
        )
        if row.webhook_endpoint_id is None:
            return message
        async with self.sessions() as db:
            endpoint = await db.get(WebhookEndpoint, row.webhook_endpoint_id)
        if endpoint is None:
            raise DeliveryError("the webhook endpoint was deleted", permanent=True)
        return dataclasses.replace(message, recipient=endpoint.url, secret=endpoint.secret)

    async def _record_loop(self) -> None:
        while True:
            first = await self._results.get()
            batch = [first]
            while not self._results.empty() and len(batch) < 1000:
                batch.append(self._results.get_nowait())
            try:
                await self._record(batch)
            except Exception:
                # The rows stay `sending` and are claimed again after the lease.
                _log.exception("recording %d delivery outcomes failed", len(batch))
            for _ in batch:
                self._results.task_done()

    async def _record_pending(self) -> None:
        batch = []
        while not self._results.empty():
            batch.append(self._results.get_nowait())
            self._results.task_done()
        if batch:
            await self._record(batch)

    async def _record(self, batch: list[Outcome]) -> None:
        released = [o for o in batch if o.released]
        attempted = [o for o in batch if not o.released]
        sent = [o for o in attempted if o.error is None]
        failed = [o for o in attempted if o.error is not None]
        async with self.sessions() as db, db.begin():
            if released:
                await db.execute(
                    _RELEASE,
                    {
                        "ids": [str(o.row.id) for o in released],
                        "attempts": [o.row.attempts for o in released],
                    },
                )
            if sent:
                await db.execute(
                    _MARK_SENT,
                    {
                        "ids": [str(o.row.id) for o in sent],
                        "attempts": [o.row.attempts for o in sent],
                    },
                )
            for outcome in failed:
                await self._record_failure(db, outcome)
            if attempted:
                await db.execute(
                    insert(Attempt),
                    [
                        {
                            "notification_id": o.row.id,
                            "outcome": _attempt_outcome(o.error),
                            "response_code": o.code if o.error is None else o.error.code,
                            "error": None if o.error is None else o.error.detail,
                            "duration_ms": o.duration_ms,
                        }
                        for o in attempted
                    ],
                )
        if released and not self._stopping:
            for outcome in released:  # due again, and no claim may have looked since
                self._backlog[outcome.row.channel] = True
            self._wake.set()
        now = datetime.now(UTC)
        for outcome in sent:
            metrics.SENT(outcome.row.channel).inc()
            latency = (now - outcome.row.created_at).total_seconds()
            metrics.DELIVERY_SECONDS(outcome.row.channel).observe(max(latency, 0.0))

    async def _record_failure(self, db: AsyncSession, outcome: Outcome) -> None:
        row, error = outcome.row, outcome.error
        assert error is not None
        values: dict[str, Any] = {"lease_until": None, "last_error": error.detail}
        if error.permanent:
            values["status"] = Status.FAILED
            metrics.FAILED(row.channel, "permanent").inc()
        elif row.attempts >= self.settings.max_attempts:
            values["status"] = Status.DEAD_LETTER
            metrics.FAILED(row.channel, "transient").inc()
            metrics.DEAD_LETTERED(row.channel).inc()
        else:
            delay = backoff_seconds(row.attempts, self.settings, error.retry_after)
            values["status"] = Status.PENDING
            values["next_attempt_at"] = func.now() + text(f"interval '{delay:.3f} seconds'")
            metrics.FAILED(row.channel, "transient").inc()
        result = await db.execute(
            update(Notification)
            .where(
                Notification.id == row.id,
                Notification.attempts == row.attempts,
                Notification.status == Status.SENDING,
            )
            .values(**values, updated_at=func.now())
            .returning(Notification.id)
        )
        if values["status"] == Status.DEAD_LETTER and result.first() is not None:
            await add_to_outbox(
                db,
                NotificationDeliveryFailed(
                    notification_id=str(row.id),
                    channel=row.channel,
                    recipient=_masked(row.recipient),
                    error=error.detail,
                    attempts=row.attempts,
                    source_event_id=row.source_event_id,
                ),
                producer=self.producer,
            )

    async def _update_depth(self) -> None:
        if time.monotonic() < self._next_depth:
            return
        self._next_depth = time.monotonic() + 5.0
        async with self.sessions() as db:
            depth = await db.scalar(
                select(func.count()).where(
                    Notification.status.in_([Status.PENDING, Status.SENDING])
                )
            )
        metrics.QUEUE_DEPTH.set(depth or 0)


def _attempt_outcome(error: DeliveryError | None) -> AttemptOutcome:
    if error is None:
        return AttemptOutcome.SENT
    return AttemptOutcome.PERMANENT_ERROR if error.permanent else AttemptOutcome.TRANSIENT_ERROR


def _masked(recipient: str) -> str:
    """An address with most of it hidden: events are read more widely than the table."""
    name, at, domain = recipient.partition("@")
    if at:
        return f"{name[:1]}***@{domain}"
    return recipient[:4] + "***" if len(recipient) > 6 else "***"

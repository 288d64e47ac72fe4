"""The ZeroMQ consumer: receives shipped batches, commits them, then acknowledges them.

It speaks the KLOG1 protocol of `keelson.logging._shipper` on a ROUTER socket. Records
from many wire batches are gathered into one database batch (up to `batch_max_records`
or `batch_max_seconds`), committed by one of `writers` tasks, and only then is every wire
batch in it acknowledged. When the database is slow or away, batches wait in a short
queue; once it is full the reader stops reading, ZeroMQ's high-water marks push the
wait back to the senders (which buffer and spill), and a failed write is retried until
it commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from uuid import UUID

import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator

from keelson.keys import KeyManager
from keelson.logging import (
    WIRE_ACK,
    WIRE_VERSION,
    CurveKeyPair,
    intake_server_keys,
    senders_by_public_key,
)
from logs_service.metrics import (
    BATCH_SECONDS,
    DUPLICATES,
    INGESTED,
    QUEUED_BATCHES,
    REJECTED,
    WRITE_RETRIES,
)
from logs_service.records import LogRow, Rejection, parse_line
from logs_service.settings import IngestSettings
from logs_service.store import LogStore, WriteOutcome
from logs_service.tail import TailHub

__all__ = ["Ingestor", "IntakeAuth", "RejectionLog"]

_log = logging.getLogger("logs_service.ingest")
_REMEMBERED_BATCHES = 20_000
_MAX_BATCH_ID = 64
_READ_BURST = 64
_ZAP_DOMAIN = "keelson-logs"


@dataclass(frozen=True)
class IntakeAuth:
    """The intake's CURVE key pair and the senders it admits, by their public keys."""

    server: CurveKeyPair
    senders: dict[bytes, str]

    @classmethod
    def derive(cls, keys: KeyManager, senders: Iterable[str]) -> IntakeAuth:
        return cls(intake_server_keys(keys), senders_by_public_key(keys, senders))

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq's CURVE credentials provider: admit only known senders' keys."""
        return key in self.senders


class RejectionLog:
    """Counts refused records and says so at most once per interval, never per record."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.totals: Counter[str] = Counter()
        self._unreported: Counter[str] = Counter()
        self._reported_at = 0.0

    def add(self, reason: Rejection, count: int = 1) -> None:
        self.totals[reason] += count
        self._unreported[reason] += count
        REJECTED.labels(reason.value).inc(count)
        self.report()

    def report(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not self._unreported or (not force and now - self._reported_at < self.interval):
            return
        self._reported_at = now
        summary = ", ".join(f"{count} {reason}" for reason, count in self._unreported.items())
        self._unreported.clear()
        _log.warning("dropped log records: %s", summary)


@dataclass(eq=False)
class _Batch:
    """A database batch being gathered: rows by id, wire batches and waiters to answer."""

    started: float
    rows: dict[UUID, LogRow] = field(default_factory=dict)
    batch_ids: list[bytes] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    from_bus: set[UUID] = field(default_factory=set)
    received: int = 0


class Ingestor:
    """Owns the ROUTER socket, the reader task and the writer tasks."""

    def __init__(
        self,
        settings: IngestSettings,
        store: LogStore,
        hub: TailHub,
        *,
        curve: IntakeAuth | None = None,
        context: zmq.asyncio.Context | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.hub = hub
        self.curve = curve
        self.rejections = RejectionLog(settings.reject_log_interval_seconds)
        # A context holds at most one ZAP handler: an authenticating intake gets its own.
        self._own_context = context is None and curve is not None
        self._context = context or (
            zmq.asyncio.Context() if curve is not None else zmq.asyncio.Context.instance()
        )
        self._authenticator: AsyncioAuthenticator | None = None
        self._socket: zmq.asyncio.Socket | None = None
        self._queue: asyncio.Queue[_Batch] = asyncio.Queue(settings.queued_batches)
        self._current: _Batch | None = None
        self._waiting: dict[bytes, list[bytes]] = {}
        self._committed: OrderedDict[bytes, None] = OrderedDict()
        self._tasks: list[asyncio.Task[None]] = []
        self._failing_since: float | None = None

    @property
    def endpoint(self) -> str:
        """The bound address (with the real port when bound to port 0)."""
        assert self._socket is not None
        value = self._socket.getsockopt(zmq.LAST_ENDPOINT)
        return value.decode() if isinstance(value, bytes) else str(value)

    @property
    def failing_for(self) -> float:
        """Seconds the database writes have been failing (0 when they succeed)."""
        if self._failing_since is None:
            return 0.0
        return time.monotonic() - self._failing_since

    async def start(self) -> None:
        socket = self._context.socket(zmq.ROUTER)
        socket.setsockopt(zmq.RCVHWM, self.settings.receive_hwm)
        socket.setsockopt(zmq.SNDHWM, 100_000)  # acknowledgements are tiny
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.MAXMSGSIZE, self.settings.max_message_bytes)
        if self.curve is not None:
            self._authenticator = AsyncioAuthenticator(self._context, log=_log)
            self._authenticator.start()
            self._authenticator.configure_curve_callback(_ZAP_DOMAIN, self.curve)
            socket.zap_domain = _ZAP_DOMAIN.encode()
            socket.curve_server = True
            socket.curve_secretkey = self.curve.server.secret
            socket.curve_publickey = self.curve.server.public
        socket.bind(self.settings.bind_endpoint)
        self._socket = socket
        self._tasks = [asyncio.create_task(self._read(), name="logs-ingest-reader")]
        self._tasks += [
            asyncio.create_task(self._write_batches(), name=f"logs-ingest-writer-{n}")
            for n in range(self.settings.writers)
        ]
        _log.info("receiving log records on %s", self.endpoint)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop reading, commit what was gathered within `grace`, then close the socket."""
        reader, writers = self._tasks[:1], self._tasks[1:]
        for task in reader:
            task.cancel()
        await asyncio.gather(*reader, return_exceptions=True)
        if self._current is not None and not self._queue.full():
            self._queue.put_nowait(self._current)
            self._current = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), grace)
        for task in writers:
            task.cancel()
        await asyncio.gather(*writers, return_exceptions=True)
        self._tasks = []
        self.rejections.report(force=True)
        if self._socket is not None:
            self._socket.close(0)
            self._socket = None
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None
        if self._own_context:
            self._context.destroy(0)

    async def submit(self, rows: list[LogRow]) -> None:
        """Add rows from elsewhere (the bus) and wait until they are committed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        batch = self._gathering()
        for row in rows:
            batch.rows.setdefault(row.id, row)
            batch.from_bus.add(row.id)
        batch.received += len(rows)
        batch.waiters.append(future)
        await future

    def _gathering(self) -> _Batch:
        if self._current is None:
            self._current = _Batch(started=time.monotonic())
        return self._current

    async def _read(self) -> None:
        assert self._socket is not None
        socket = self._socket
        while True:
            batch = self._current
            # Never waits longer than one batch interval: `submit` may have added rows.
            age = 0.0 if batch is None else time.monotonic() - batch.started
            timeout = max(0, int((self.settings.batch_max_seconds - age) * 1000))
            if await socket.poll(timeout):
                for _ in range(_READ_BURST):
                    try:
                        received = await socket.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    await self._accept([frame.bytes for frame in received], self._sender(received))
                    if self._full(self._current):
                        break
            batch = self._current
            if batch is not None and (self._full(batch) or self._due(batch)):
                self._current = None
                # The back-pressure point: while writers are behind, nothing is read.
                await self._queue.put(batch)
                QUEUED_BATCHES.set(self._queue.qsize())

    def _full(self, batch: _Batch | None) -> bool:
        return batch is not None and len(batch.rows) >= self.settings.batch_max_records

    def _due(self, batch: _Batch) -> bool:
        return time.monotonic() - batch.started >= self.settings.batch_max_seconds

    def _sender(self, frames: list[zmq.Frame]) -> str | None:
        """The service whose key the intake authenticated (None without CURVE)."""
        if self.curve is None or not frames:
            return None
        user_id = frames[-1].get("User-Id")  # the Z85 public key the ZAP handler admitted
        return self.curve.senders.get(user_id.encode()) if isinstance(user_id, str) else None

    async def _accept(self, frames: list[bytes], sender: str | None = None) -> None:
        if len(frames) != 4 or frames[1] != WIRE_VERSION or len(frames[2]) > _MAX_BATCH_ID:
            self.rejections.add(Rejection.BAD_FRAMES)
            return
        identity, _, batch_id, payload = frames
        if batch_id in self._committed:
            await self._ack(identity, batch_id)
            return
        waiting = self._waiting.get(batch_id)
        if waiting is not None:  # a re-send of a batch not committed yet
            if identity not in waiting:
                waiting.append(identity)
            return
        self._waiting[batch_id] = [identity]
        batch = self._gathering()
        batch.batch_ids.append(batch_id)
        now = datetime.now(UTC)
        oldest = datetime.combine(
            now.date() - timedelta(days=self.settings.retention_days), datetime.min.time(), UTC
        ).timestamp()
        newest = (now + timedelta(seconds=self.settings.max_clock_skew_seconds)).timestamp()
        for line in payload.split(b"\n"):
            parsed = parse_line(
                line,
                max_bytes=self.settings.max_record_bytes,
                oldest=oldest,
                newest=newest,
                sender=sender,
            )
            if isinstance(parsed, Rejection):
                self.rejections.add(parsed)
            else:
                batch.received += 1
                batch.rows.setdefault(parsed.id, parsed)

    async def _ack(self, identity: bytes, batch_id: bytes) -> None:
        if self._socket is None:
            return
        # A ROUTER drops what it cannot route (the sender went away): it will re-send.
        with contextlib.suppress(zmq.ZMQError):
            await self._socket.send_multipart([identity, WIRE_ACK, batch_id], zmq.NOBLOCK)

    async def _write_batches(self) -> None:
        while True:
            batch = await self._queue.get()
            QUEUED_BATCHES.set(self._queue.qsize())
            try:
                outcome = await self._commit(batch)
                await self._settle(batch, outcome)
            finally:
                self._queue.task_done()

    async def _commit(self, batch: _Batch) -> WriteOutcome:
        rows = list(batch.rows.values())
        delay = 0.05
        while True:
            started = time.perf_counter()
            try:
                outcome = await self.store.write(rows)
            except Exception as exc:
                WRITE_RETRIES.inc()
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    _log.warning("writing log records failed, retrying: %s", _describe(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.retry_max_seconds)
                continue
            BATCH_SECONDS.observe(time.perf_counter() - started)
            if self._failing_since is not None:
                _log.info("writing log records again after %.1fs", self.failing_for)
                self._failing_since = None
            return outcome

    async def _settle(self, batch: _Batch, outcome: WriteOutcome) -> None:
        from_bus = sum(1 for row in outcome.inserted if row.id in batch.from_bus)
        INGESTED.labels("bus").inc(from_bus)
        INGESTED.labels("zmq").inc(len(outcome.inserted) - from_bus)
        DUPLICATES.inc(outcome.duplicates + batch.received - len(batch.rows))
        if outcome.refused:
            self.rejections.add(Rejection.REFUSED_BY_DATABASE, len(outcome.refused))
        for batch_id in batch.batch_ids:
            self._committed[batch_id] = None
            if len(self._committed) > _REMEMBERED_BATCHES:
                self._committed.popitem(last=False)
            for identity in self._waiting.pop(batch_id, ()):
                await self._ack(identity, batch_id)
        for waiter in batch.waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.hub.publish(outcome.inserted)


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:200]

"""Ships log records to the log service over ZeroMQ in acknowledged batches.

The calling thread only turns a record into a dict and appends it to a bounded buffer;
when the buffer is full the record is appended to a spill file (see `_spill`), and when
the spill directory is full too the record is dropped and counted
(`log_records_dropped_total{reason}`). A background thread owns the socket, sends
batches, re-sends what is not acknowledged and reads spilled records back.

Wire protocol, version KLOG1 (the contract with the log service, `logs_service.ingest`):

    sender    a DEALER socket connected to the log service's ROUTER (ship_endpoint)
    batch     DEALER -> ROUTER  [b"KLOG1", batch_id, payload]
              batch_id  32 ASCII hex characters, unique per batch, the same on re-send
              payload   UTF-8 JSON lines, one record per line, lines joined by b"\\n":
                        {"id":         32 hex characters, unique per record (de-dup key),
                         "ts":         seconds since the Unix epoch (float),
                         "service":    str,  "level": str (DEBUG..CRITICAL),
                         "logger":     str,  "message": str,
                         "request_id", "trace_id", "user_id": str or null,
                         "attrs":      object (extra fields, already redacted)}
    ack       ROUTER -> DEALER  [b"ACK", batch_id]
              sent only after every record of the batch is committed, or rejected as
              malformed and counted; a batch id may be acknowledged more than once.

The sender keeps every unacknowledged batch (at most `max_in_flight`) and sends it again,
with the same id, every `ack_timeout` seconds and at once when the connection comes
back, until it is acknowledged. Delivery is therefore at-least-once: batches can arrive
twice and out of order, and the receiver stores each record id at most once, which
makes it exactly once in the table. On close the shipper waits a bounded time for what
it holds to be acknowledged and spills the rest, which the next shipper sends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import zmq
from zmq.utils.monitor import recv_monitor_message

from keelson.config import KeelsonSettings
from keelson.keys import KeyManager
from keelson.logging._fork import register_at_fork
from keelson.logging._format import record_to_dict
from keelson.logging._intake import SenderCredentials
from keelson.logging._spill import SpillSegment, SpillStore
from keelson.metrics import LOG_RECORDS_DROPPED, LOG_RECORDS_SPILLED

__all__ = ["WIRE_ACK", "WIRE_VERSION", "LogShipper", "ShipperStats"]

WIRE_VERSION = b"KLOG1"
WIRE_ACK = b"ACK"

# The shipper's own records go to the console only: shipping them would feed back.
_OWN_LOGGER = "keelson.logging.shipper"
_log = logging.getLogger(_OWN_LOGGER)
_POLL_MS = 25
_ADOPT_EVERY = 30.0
_WARN_EVERY = 30.0


@dataclass(frozen=True)
class ShipperStats:
    buffered: int
    in_flight: int
    in_flight_from_spill: int
    spill_bytes: int
    acknowledged: int
    spilled: int
    dropped: dict[str, int]
    resent_batches: int


@dataclass(eq=False)
class _Batch:
    id: bytes
    lines: list[bytes]
    segment: SpillSegment | None
    sent_at: float = 0.0


class LogShipper(logging.Handler):
    """A logging handler that never blocks its caller for long and never raises."""

    def __init__(
        self,
        endpoint: str,
        *,
        service: str,
        buffer_size: int = 10_000,
        spill_dir: Path = Path(".keelson/spill"),
        spill_max_bytes: int = 64 * 1024 * 1024,
        batch_size: int = 500,
        ack_timeout: float = 2.0,
        max_in_flight: int = 8,
        close_timeout: float = 5.0,
        credentials: SenderCredentials | None = None,
    ) -> None:
        super().__init__()
        self.endpoint = endpoint
        self.service = service
        self.credentials = credentials
        self.buffer_size = buffer_size
        self.batch_size = batch_size
        self.ack_timeout = ack_timeout
        self.max_in_flight = max_in_flight
        self.close_timeout = close_timeout
        self._spill = SpillStore(spill_dir, max_bytes=spill_max_bytes, prefix=service)
        self._spilled = 0
        self._dropped: dict[str, int] = {}
        self._counts_lock = threading.Lock()
        self._closed = False
        self._start()
        register_at_fork(after_in_child=self.after_fork_in_child)

    @classmethod
    def from_settings(cls, settings: KeelsonSettings) -> LogShipper:
        log = settings.log
        if log.ship_endpoint is None:
            raise ValueError("settings.log.ship_endpoint is not set")
        return cls(
            log.ship_endpoint,
            service=settings.service,
            buffer_size=log.buffer_size,
            spill_dir=log.spill_dir,
            spill_max_bytes=log.spill_max_bytes,
            batch_size=log.batch_size,
            ack_timeout=log.ack_timeout_seconds,
            credentials=SenderCredentials.derive(
                KeyManager.from_settings(settings), settings.service
            )
            if log.ship_curve
            else None,
        )

    def _start(self) -> None:
        self._pid = os.getpid()
        self._buffer: deque[dict[str, Any]] = deque()
        self._closing = threading.Event()
        self._sender = _Sender(self)
        self._thread_id: int | None = None
        self._thread = threading.Thread(
            target=self._sender.run, name="keelson-log-shipper", daemon=True
        )
        self._thread.start()
        self._thread_id = self._thread.ident

    def after_fork_in_child(self) -> None:
        """The parent still owns its buffer, spill files and socket; start afresh."""
        if self._closed:
            return
        self._spill.forget()
        self._counts_lock = threading.Lock()
        self._start()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(_OWN_LOGGER) or threading.get_ident() == self._thread_id:
            return
        try:
            self._ship(record_to_dict(record, self.service))
        except Exception:
            self._count_drop("error", 1)

    def accepts_fields(self) -> bool:
        return not self.filters

    def emit_fields(self, data: dict[str, Any], msecs: float, levelno: int) -> None:
        """`emit` for a record already in its `record_to_dict` form (`log_access_record`);
        `msecs` and `levelno` are for the console's sake."""
        if data["logger"].startswith(_OWN_LOGGER) or threading.get_ident() == self._thread_id:
            return
        try:
            self._ship(data)
        except Exception:
            self._count_drop("error", 1)

    def _ship(self, data: dict[str, Any]) -> None:
        if self._pid != os.getpid():
            self.after_fork_in_child()
        if self._sender.stopped:
            self._spill_after_stop([data])
        elif len(self._buffer) < self.buffer_size:
            self._buffer.append(data)
            if self._sender.stopped:  # it stopped in between: nobody else takes these
                self._spill_after_stop([])
        else:
            self._spill_records([data])

    def flush(self) -> None:
        """Never waits: delivery is the sender thread's job (see `drain`)."""

    def drain(self, timeout: float) -> bool:
        """Wait until everything buffered, in flight or spilled is acknowledged."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if self._sender.idle(left):
                return True
            time.sleep(0.01)
        return self._sender.idle(0)

    def close(self) -> None:
        """Flush with a bounded wait, spill what is still unacknowledged, stop the thread."""
        self._closed = True
        if self._pid == os.getpid() and self._thread.is_alive():
            self._closing.set()
            self._thread.join(self.close_timeout + 1.0)
        super().close()

    def stats(self) -> ShipperStats:
        with self._counts_lock:
            dropped = dict(self._dropped)
            spilled = self._spilled
        return ShipperStats(
            buffered=len(self._buffer),
            in_flight=self._sender.in_flight_records,
            in_flight_from_spill=self._sender.in_flight_from_spill,
            spill_bytes=self._spill.size,
            acknowledged=self._sender.acknowledged,
            spilled=spilled,
            dropped=dropped,
            resent_batches=self._sender.resent_batches,
        )

    def _spill_after_stop(self, records: list[dict[str, Any]]) -> None:
        """Nobody sends any more: to a released spill file, which the next shipper sends."""
        while self._buffer:
            records.append(self._buffer.popleft())
        self._spill_records(records)
        self._spill.close()

    def _spill_records(self, records: list[dict[str, Any]]) -> None:
        lines = [line for line in map(self._encode, records) if line is not None]
        self._spill_lines(lines)

    def _spill_lines(self, lines: list[bytes]) -> None:
        if not lines:
            return
        written = self._spill.write(lines)
        if written:
            with self._counts_lock:
                self._spilled += written
            LOG_RECORDS_SPILLED.inc(written)
        if written < len(lines):
            self._count_drop("spill_full", len(lines) - written)

    def _encode(self, record: dict[str, Any]) -> bytes | None:
        try:
            return orjson.dumps(record, default=str)
        except (TypeError, orjson.JSONEncodeError):
            self._count_drop("unencodable", 1)
            return None

    def _count_drop(self, reason: str, count: int) -> None:
        with contextlib.suppress(Exception):
            with self._counts_lock:
                self._dropped[reason] = self._dropped.get(reason, 0) + count
            LOG_RECORDS_DROPPED.labels(reason).inc(count)


class _Sender:
    """The background thread's side: the socket, the batches in flight, spill read-back."""

    def __init__(self, shipper: LogShipper) -> None:
        self.shipper = shipper
        self.buffer = shipper._buffer
        self.closing = shipper._closing
        self.spill = shipper._spill
        self.pending: dict[bytes, _Batch] = {}
        # Held while lines are taken from the buffer or spill and put in `pending`, so
        # `idle` never looks in between, when they are in neither.
        self._handoff = threading.Lock()
        self.in_flight_records = 0
        self.in_flight_from_spill = 0
        self.acknowledged = 0
        self.resent_batches = 0
        self.stopped = False
        self._connected = False
        self._warned_at = 0.0
        self._warned_counts = (0, 0)

    def idle(self, timeout: float = -1) -> bool:
        """Nothing buffered, in flight or spilled; False if that cannot be seen in `timeout`
        seconds (the sender holds the hand-off while it reads a batch)."""
        if not self._handoff.acquire(timeout=timeout):
            return False
        try:
            return not self.buffer and not self.pending and not self.spill.has_data()
        finally:
            self._handoff.release()

    def run(self) -> None:
        context = zmq.Context()
        socket = context.socket(zmq.DEALER)
        # IMMEDIATE: without a live connection sends fail at once instead of queueing
        # copies that a re-send would only duplicate.
        socket.setsockopt(zmq.IMMEDIATE, 1)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.SNDHWM, self.shipper.max_in_flight * 2)
        socket.setsockopt(zmq.RECONNECT_IVL, 100)
        socket.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        if self.shipper.credentials is not None:
            self.shipper.credentials.apply(socket)
        monitor = socket.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        socket.connect(self.shipper.endpoint)
        try:
            self._loop(socket, monitor)
        except Exception:
            _log.exception("log shipper stopped unexpectedly")
        finally:
            self.stopped = True
            self._spill_leftovers()
            socket.disable_monitor()
            monitor.close(0)
            socket.close(0)
            context.term()

    def _loop(self, socket: zmq.Socket[bytes], monitor: zmq.Socket[bytes]) -> None:
        poller = zmq.Poller()
        poller.register(socket, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        next_adoption = 0.0
        close_started: float | None = None
        progress_at = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= next_adoption:
                self.spill.adopt_orphans()
                next_adoption = now + _ADOPT_EVERY
            if self._receive_monitor(monitor):
                for batch in self.pending.values():
                    batch.sent_at = 0.0
            if self._receive_acks(socket):
                progress_at = now
            self._resend_expired(socket, now)
            self._fill_window(socket, now)
            if self.closing.is_set():
                if close_started is None:
                    close_started = progress_at = now
                if self._done_closing(now, close_started, progress_at):
                    return
            if self.spill.pending:
                self.spill.write_pending()
            if failed := self.spill.take_failed():
                self.shipper._count_drop("spill_error", failed)
            self._warn_about_losses(now)
            busy = len(self.buffer) >= self.shipper.batch_size and self._window_open()
            poller.poll(0 if busy else _POLL_MS)

    def _done_closing(self, now: float, started: float, progress_at: float) -> bool:
        """Closing waits for acknowledgements only while they can still come."""
        if self.idle() or now - started >= self.shipper.close_timeout:
            return True
        if not self._connected:
            return now - started >= min(self.shipper.ack_timeout, 1.0)
        return now - progress_at > self.shipper.ack_timeout

    def _receive_monitor(self, monitor: zmq.Socket[bytes]) -> bool:
        """Track the connection; True when it (re)connected, so re-send everything now."""
        reconnected = False
        while True:
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return reconnected
            if event["event"] == zmq.EVENT_CONNECTED:
                self._connected = reconnected = True
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                self._connected = False

    def _receive_acks(self, socket: zmq.Socket[bytes]) -> bool:
        got_any = False
        while True:
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return got_any
            if len(frames) < 2 or frames[0] != WIRE_ACK:
                continue
            batch = self.pending.pop(frames[1], None)
            if batch is None:
                continue
            got_any = True
            self.in_flight_records -= len(batch.lines)
            self.acknowledged += len(batch.lines)
            if batch.segment is not None:
                self.in_flight_from_spill -= len(batch.lines)
                self.spill.release(batch.segment)

    def _window_open(self) -> bool:
        return len(self.pending) < self.shipper.max_in_flight

    def _fill_window(self, socket: zmq.Socket[bytes], now: float) -> None:
        while self._window_open():
            with self._handoff:
                taken = self._next_lines()
                if taken is None:
                    return
                segment, lines = taken
                batch = _Batch(uuid.uuid4().hex.encode(), lines, segment)
                self.pending[batch.id] = batch
            self.in_flight_records += len(lines)
            if segment is not None:
                self.in_flight_from_spill += len(lines)
            self._send(socket, batch, now)

    def _next_lines(self) -> tuple[SpillSegment | None, list[bytes]] | None:
        # Spilled records go first unless memory is filling up, so the disk empties
        # while the service keeps logging.
        if self.spill.has_data() and len(self.buffer) < self.shipper.buffer_size // 2:
            read = self.spill.read_batch(self.shipper.batch_size)
            if read is not None:
                return read
        records: list[dict[str, Any]] = []
        while self.buffer and len(records) < self.shipper.batch_size:
            records.append(self.buffer.popleft())
        try:
            lines = [orjson.dumps(record, default=str) for record in records]
        except (TypeError, orjson.JSONEncodeError):  # find and count the bad ones
            lines = [line for line in map(self.shipper._encode, records) if line is not None]
        return (None, lines) if lines else None

    def _send(self, socket: zmq.Socket[bytes], batch: _Batch, now: float) -> None:
        batch.sent_at = now
        # Again: not connected, or the receiver is pushing back; re-sent after ack_timeout.
        with contextlib.suppress(zmq.Again):
            socket.send_multipart(
                [WIRE_VERSION, batch.id, b"\n".join(batch.lines)], flags=zmq.NOBLOCK, copy=False
            )

    def _resend_expired(self, socket: zmq.Socket[bytes], now: float) -> None:
        for batch in list(self.pending.values()):
            if now - batch.sent_at >= self.shipper.ack_timeout:
                self.resent_batches += 1
                self._send(socket, batch, now)

    def _spill_leftovers(self) -> None:
        """Records still in memory go to disk; spilled ones are already there."""
        lines = [
            line for batch in self.pending.values() if batch.segment is None for line in batch.lines
        ]
        self.pending.clear()
        self.in_flight_records = self.in_flight_from_spill = 0
        while self.buffer:
            line = self.shipper._encode(self.buffer.popleft())
            if line is not None:
                lines.append(line)
        self.shipper._spill_lines(lines)
        self.spill.close()
        if failed := self.spill.take_failed():
            self.shipper._count_drop("spill_error", failed)

    def _warn_about_losses(self, now: float) -> None:
        if now - self._warned_at < _WARN_EVERY:
            return
        stats = self.shipper.stats()
        counts = (stats.spilled, sum(stats.dropped.values()))
        if counts == self._warned_counts:
            return
        spilled = counts[0] - self._warned_counts[0]
        dropped = counts[1] - self._warned_counts[1]
        self._warned_at, self._warned_counts = now, counts
        if dropped:
            _log.error("log service unreachable: %d log records dropped", dropped)
        if spilled:
            _log.warning(
                "log service slow or unreachable: %d records spilled to %s",
                spilled,
                self.spill.directory,
            )

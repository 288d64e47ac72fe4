"""The no-Redis bus: ZeroMQ PUB/SUB through an XSUB/XPUB broker.

This transport is at-most-once: nothing is stored, so an event published while a
subscriber is away (or before its subscription reached the broker), or dropped at a full
queue, is gone; a handler that fails is not retried. Every process receives every event
it subscribed to, so groups only run a group's handlers once per process (they do not
share the load across replicas). It exists so the suite runs with no Redis at all;
production runs on Redis Streams.

Frames: `[b"e:" + topic, envelope JSON]` for events, `[b"b:" + channel, payload JSON]`
for broadcasts, `[b"p:" + token, b""]` for the probes that tell when subscriptions are live.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import zmq
import zmq.asyncio
from pydantic import ValidationError

from keelson.bus._base import (
    BatchHandler,
    BroadcastHandler,
    Group,
    Handler,
    Outcome,
    Subscriptions,
    handled_counter,
    to_envelope,
)
from keelson.bus._dedupe import MemoryProcessedIds
from keelson.events import Envelope, Event
from keelson.plugins import Health
from keelson.tasks import cancel_and_wait

__all__ = ["ZmqBroker", "ZmqBus"]

_log = logging.getLogger("keelson.bus")

_EVENT = b"e:"
_BROADCAST = b"b:"
_PROBE = b"p:"
_KEEPALIVE_SECONDS = 5.0
_PROBE_INTERVAL = 0.05


class ZmqBroker:
    """XSUB (publishers connect) ↔ XPUB (subscribers connect), proxied in a thread."""

    def __init__(self, xsub_endpoint: str, xpub_endpoint: str, *, hwm: int = 100_000) -> None:
        self.xsub_endpoint = xsub_endpoint
        self.xpub_endpoint = xpub_endpoint
        self.hwm = hwm
        self._context: zmq.Context[zmq.Socket[bytes]] | None = None
        self._thread: threading.Thread | None = None
        self._control = f"inproc://keelson-broker-{uuid.uuid4().hex}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Bind both endpoints (raising here if one is taken), then proxy in a thread."""
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        sockets: list[zmq.Socket[bytes]] = []
        try:
            for kind, endpoint in ((zmq.XSUB, self.xsub_endpoint), (zmq.XPUB, self.xpub_endpoint)):
                sock = context.socket(kind)
                sockets.append(sock)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.SNDHWM, self.hwm)
                sock.setsockopt(zmq.RCVHWM, self.hwm)
                sock.bind(endpoint)
            control = context.socket(zmq.PAIR)
            sockets.append(control)
            control.bind(self._control)
        except zmq.ZMQError:
            for sock in sockets:
                sock.close(linger=0)
            context.term()
            raise
        self._context = context
        self._thread = threading.Thread(
            target=self._proxy, args=tuple(sockets), name="keelson-zmq-broker", daemon=True
        )
        self._thread.start()
        _log.info("bus broker: publishers -> %s, subscribers <- %s", *self.endpoints)

    @property
    def endpoints(self) -> tuple[str, str]:
        return self.xsub_endpoint, self.xpub_endpoint

    def stop(self) -> None:
        if self._context is None or self._thread is None:
            return
        command = self._context.socket(zmq.PAIR)
        command.connect(self._control)
        command.send(b"TERMINATE")
        self._thread.join(timeout=5)
        command.close(linger=0)
        self._context.term()
        self._context = self._thread = None

    @staticmethod
    def _proxy(
        xsub: zmq.Socket[bytes], xpub: zmq.Socket[bytes], control: zmq.Socket[bytes]
    ) -> None:
        try:
            zmq.proxy_steerable(xsub, xpub, None, control)
        except zmq.ContextTerminated:
            pass
        finally:
            for sock in (xsub, xpub, control):
                sock.close(linger=0)


class ZmqBus:
    """At-most-once events and broadcasts through a `ZmqBroker`; see `keelson.bus.Bus`."""

    transport = "zmq"

    def __init__(
        self,
        *,
        producer: str,
        xsub_endpoint: str,
        xpub_endpoint: str,
        hwm: int = 100_000,
    ) -> None:
        self.producer = producer
        self.xsub_endpoint = xsub_endpoint
        self.xpub_endpoint = xpub_endpoint
        self.hwm = hwm
        self.processed = MemoryProcessedIds()
        self._subscriptions = Subscriptions()
        self._context: zmq.asyncio.Context | None = None
        self._pub: zmq.asyncio.Socket | None = None
        self._sub: zmq.asyncio.Socket | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._probes: dict[bytes, asyncio.Event] = {}
        self._probe_ids = itertools.count()
        self._instance = uuid.uuid4().hex[:12].encode()
        self._last_probe_ok = 0.0

    def subscribe(
        self, pattern: str, handler: Handler, *, group: str, dedupe: bool = False
    ) -> None:
        entry = self._subscriptions.add(pattern, handler, group=group, dedupe=dedupe)
        if self._sub is not None:
            self._sub.subscribe(_EVENT + entry.patterns[-1][0].prefix.encode())

    def subscribe_batch(self, pattern: str, handler: BatchHandler, *, group: str) -> None:
        entry = self._subscriptions.add_batch(pattern, handler, group=group)
        if self._sub is not None:
            self._sub.subscribe(_EVENT + entry.batch_patterns[-1][0].prefix.encode())

    def on_broadcast(self, channel: str, handler: BroadcastHandler) -> None:
        if self._subscriptions.add_broadcast(channel, handler) and self._sub is not None:
            self._sub.subscribe(_BROADCAST + channel.encode())

    async def publish(self, event: Event | Envelope) -> Envelope:
        envelope = to_envelope(event, self.producer)
        await self._send(_EVENT + envelope.type.encode(), envelope.to_json())
        return envelope

    async def publish_many(self, events: Sequence[Event | Envelope]) -> list[Envelope]:
        return [await self.publish(event) for event in events]

    async def broadcast(self, channel: str, payload: Mapping[str, Any]) -> None:
        await self._send(_BROADCAST + channel.encode(), orjson.dumps(dict(payload)))

    async def _send(self, key: bytes, body: bytes) -> None:
        if self._pub is None:
            raise RuntimeError("the bus is not started")
        await self._pub.send_multipart([key, body])

    async def start(self) -> None:
        if self._context is not None:
            return
        self._context = zmq.asyncio.Context()
        self._pub = self._context.socket(zmq.PUB)
        self._pub.setsockopt(zmq.SNDHWM, self.hwm)
        self._pub.setsockopt(zmq.LINGER, 1000)
        self._pub.connect(self.xsub_endpoint)
        self._sub = self._context.socket(zmq.SUB)
        self._sub.setsockopt(zmq.RCVHWM, self.hwm)
        self._sub.setsockopt(zmq.LINGER, 0)
        self._sub.connect(self.xpub_endpoint)
        for group in self._subscriptions.groups.values():
            for pattern in group.all_patterns:
                self._sub.subscribe(_EVENT + pattern.prefix.encode())
        for channel in self._subscriptions.broadcasts:
            self._sub.subscribe(_BROADCAST + channel.encode())
        self._tasks = [
            asyncio.create_task(self._receive(), name="bus-zmq-receive"),
            asyncio.create_task(self._keepalive(), name="bus-zmq-keepalive"),
        ]

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
        self._tasks = []
        for sock in (self._pub, self._sub):
            if sock is not None:
                sock.close()
        if self._context is not None:
            # term() waits up to the PUB linger for unsent messages: not on the event loop.
            await asyncio.to_thread(self._context.term)
        self._context = self._pub = self._sub = None

    async def wait_ready(self, timeout: float = 5.0) -> None:
        """Round-trip a probe through the broker, subscribed after everything else."""
        if not await self._probe(timeout):
            raise TimeoutError(f"no answer from the bus broker at {self.xpub_endpoint}")

    async def health(self) -> Health:
        connected = time.monotonic() - self._last_probe_ok < 3 * _KEEPALIVE_SECONDS
        detail = f"zeromq via {self.xpub_endpoint}, at-most-once"
        if not connected:
            detail += ", broker not answering"
        return Health(ok=connected, detail=detail, critical=False)

    async def _probe(self, timeout: float) -> bool:
        if self._sub is None:
            raise RuntimeError("the bus is not started")
        key = _PROBE + self._instance + b":" + str(next(self._probe_ids)).encode()
        received = self._probes[key] = asyncio.Event()
        self._sub.subscribe(key)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                await self._send(key, b"")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_PROBE_INTERVAL):
                        await received.wait()
                if received.is_set():
                    self._last_probe_ok = time.monotonic()
                    return True
            return False
        finally:
            del self._probes[key]
            if self._sub is not None:
                self._sub.unsubscribe(key)

    async def _keepalive(self) -> None:
        while True:
            if not await self._probe(_KEEPALIVE_SECONDS / 2):
                _log.warning("bus broker at %s is not answering", self.xpub_endpoint)
            await asyncio.sleep(_KEEPALIVE_SECONDS)

    async def _receive(self) -> None:
        assert self._sub is not None
        while True:
            frames = await self._sub.recv_multipart()
            if len(frames) != 2:
                continue
            key, body = frames
            if key.startswith(_EVENT):
                await self._on_event(key[len(_EVENT) :].decode(errors="replace"), body)
            elif key.startswith(_BROADCAST):
                await self._on_broadcast(key[len(_BROADCAST) :].decode(errors="replace"), body)
            elif key.startswith(_PROBE) and key in self._probes:
                self._probes[key].set()

    async def _on_event(self, topic: str, body: bytes) -> None:
        groups = [g for g in self._subscriptions.groups.values() if g.matches(topic)]
        if not groups:
            return
        try:
            envelope = Envelope.from_json(body)
        except ValidationError:
            _log.warning("bus event on %s is not an envelope; dropped", topic)
            return
        for group in groups:
            await self._dispatch(group, envelope)

    async def _dispatch(self, group: Group, envelope: Envelope) -> None:
        topic = envelope.type
        if group.dedupe and await self.processed.seen(group.name, [envelope.id]):
            handled_counter(topic, group.name, Outcome.DUPLICATE).inc()
            return
        try:
            await group.dispatch(envelope)
        except Exception:
            handled_counter(topic, group.name, Outcome.ERROR).inc()
            _log.exception(
                "bus handler of group %s failed on %s %s; at-most-once transport, not retried",
                group.name,
                topic,
                envelope.id,
            )
            return
        handled_counter(topic, group.name, Outcome.OK).inc()
        if group.dedupe:
            await self.processed.mark(group.name, [envelope.id])

    async def _on_broadcast(self, channel: str, body: bytes) -> None:
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            _log.warning("bus broadcast on %s is not JSON; dropped", channel)
            return
        await self._subscriptions.deliver_broadcast(channel, payload)

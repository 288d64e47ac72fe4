"""The bus contract every transport implements, and the subscription table they share."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from prometheus_client import Counter

from keelson.bus._topics import TopicPattern, validate_topic
from keelson.events import Envelope, Event
from keelson.logging import trace_id_var
from keelson.metrics import BUS_HANDLED
from keelson.plugins import Health

__all__ = [
    "BatchHandler",
    "BroadcastHandler",
    "Bus",
    "Group",
    "Handler",
    "Outcome",
    "Subscriptions",
    "handled_counter",
    "to_envelope",
]

_log = logging.getLogger("keelson.bus")

Handler = Callable[[Envelope], Awaitable[None]]
# Handles several events at once (one transaction for all, say) and returns the ones it
# failed on, by envelope id; raising fails them all.
BatchHandler = Callable[[Sequence[Envelope]], Awaitable[Mapping[str, Exception]]]
BroadcastHandler = Callable[[dict[str, Any]], Awaitable[None]]


class Bus(Protocol):
    """Durable events by topic (`publish`/`subscribe`) and ephemeral broadcasts.

    Handlers of one `group` share the events (each is handled once per group, by one
    consumer of it); different groups each get every event. A group's handlers should be
    idempotent by `envelope.id`: delivery is at-least-once on Redis (at-most-once on the
    ZeroMQ transport). `subscribe` and `on_broadcast` may be called before or after `start`.
    """

    @property
    def transport(self) -> str: ...

    def subscribe(
        self, pattern: str, handler: Handler, *, group: str, dedupe: bool = False
    ) -> None: ...

    def subscribe_batch(self, pattern: str, handler: BatchHandler, *, group: str) -> None:
        """Like `subscribe`, but the handler takes the events read together (up to
        `batch_size` of one topic on Redis; one at a time on ZeroMQ). Events it reports
        failed are retried or dead-lettered alone; the others are acknowledged."""

    def on_broadcast(self, channel: str, handler: BroadcastHandler) -> None: ...

    async def publish(self, event: Event | Envelope) -> Envelope: ...

    async def publish_many(self, events: Sequence[Event | Envelope]) -> list[Envelope]:
        """Publish `events` in their order, in one round trip where the transport allows.

        If it raises, any of them may have been published (at-least-once, as `publish`).
        """

    async def broadcast(self, channel: str, payload: Mapping[str, Any]) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def wait_ready(self, timeout: float = 5.0) -> None:
        """Return once every subscription made so far receives what is published next."""

    async def health(self) -> Health: ...


class Outcome(StrEnum):
    OK = "ok"
    ERROR = "error"
    DEAD = "dead"
    DUPLICATE = "duplicate"


@functools.lru_cache(maxsize=4096)
def handled_counter(topic: str, group: str, outcome: str) -> Counter:
    """The `BUS_HANDLED` child for these labels (cached: `labels()` is slow on hot paths)."""
    return BUS_HANDLED.labels(topic, group, outcome)


def to_envelope(event: Event | Envelope, producer: str) -> Envelope:
    envelope = event.envelope(producer=producer) if isinstance(event, Event) else event
    validate_topic(envelope.type)
    return envelope


@dataclass
class Group:
    """The handlers of one consumer group; an event goes to each whose pattern matches."""

    name: str
    dedupe: bool = False
    patterns: list[tuple[TopicPattern, Handler]] = field(default_factory=list)
    batch_patterns: list[tuple[TopicPattern, BatchHandler]] = field(default_factory=list)
    _by_topic: dict[str, tuple[Handler, ...]] = field(default_factory=dict, repr=False)
    _batch_by_topic: dict[str, tuple[BatchHandler, ...]] = field(default_factory=dict, repr=False)

    def add(self, pattern: TopicPattern, handler: Handler) -> None:
        self.patterns.append((pattern, handler))
        self._by_topic.clear()

    def add_batch(self, pattern: TopicPattern, handler: BatchHandler) -> None:
        self.batch_patterns.append((pattern, handler))
        self._batch_by_topic.clear()

    @property
    def all_patterns(self) -> list[TopicPattern]:
        return [p for p, _ in self.patterns] + [p for p, _ in self.batch_patterns]

    def matches(self, topic: str) -> bool:
        return bool(self.handlers_for(topic) or self.batch_handlers_for(topic))

    def batch_handlers_for(self, topic: str) -> tuple[BatchHandler, ...]:
        handlers = self._batch_by_topic.get(topic)
        if handlers is None:
            handlers = tuple(h for p, h in self.batch_patterns if p.matches(topic))
            self._batch_by_topic[topic] = handlers
        return handlers

    def handlers_for(self, topic: str) -> tuple[Handler, ...]:
        handlers = self._by_topic.get(topic)
        if handlers is None:
            handlers = tuple(h for p, h in self.patterns if p.matches(topic))
            self._by_topic[topic] = handlers
        return handlers

    async def dispatch(self, envelope: Envelope) -> None:
        """Run every matching handler in order, under the event's trace id.

        The first failure propagates.
        """
        token = trace_id_var.set(envelope.trace_id)
        try:
            for handler in self.handlers_for(envelope.type):
                await handler(envelope)
            for batch_handler in self.batch_handlers_for(envelope.type):
                failed = await batch_handler([envelope])
                if envelope.id in failed:
                    raise failed[envelope.id]
        finally:
            trace_id_var.reset(token)

    async def dispatch_batch(
        self, topic: str, envelopes: Sequence[Envelope]
    ) -> dict[str, Exception]:
        """Events of one topic through every matching handler; the failures by envelope id.

        Each event goes through the one-at-a-time handlers (under its trace id), then
        those it did not fail in go to each batch handler together. An event a handler
        failed on goes to no later handler, as with `dispatch`.
        """
        failed: dict[str, Exception] = {}
        handlers = self.handlers_for(topic)
        if handlers:
            for envelope in envelopes:
                token = trace_id_var.set(envelope.trace_id)
                try:
                    for handler in handlers:
                        await handler(envelope)
                except Exception as exc:
                    failed[envelope.id] = exc
                finally:
                    trace_id_var.reset(token)
        for batch_handler in self.batch_handlers_for(topic):
            todo = [e for e in envelopes if e.id not in failed]
            if not todo:
                break
            try:
                failed.update(await batch_handler(todo))
            except Exception as exc:
                failed.update(dict.fromkeys((e.id for e in todo), exc))
        return failed


class Subscriptions:
    """Groups by name and broadcast handlers by channel, as registered by `subscribe`."""

    def __init__(self) -> None:
        self.groups: dict[str, Group] = {}
        self.broadcasts: dict[str, list[BroadcastHandler]] = {}

    def add(self, pattern: str, handler: Handler, *, group: str, dedupe: bool) -> Group:
        validate_topic(group)
        compiled = TopicPattern(pattern)
        entry = self.groups.get(group)
        if entry is None:
            entry = self.groups[group] = Group(group)
        entry.dedupe = entry.dedupe or dedupe
        entry.add(compiled, handler)
        return entry

    def add_batch(self, pattern: str, handler: BatchHandler, *, group: str) -> Group:
        validate_topic(group)
        compiled = TopicPattern(pattern)
        entry = self.groups.get(group)
        if entry is None:
            entry = self.groups[group] = Group(group)
        entry.add_batch(compiled, handler)
        return entry

    def add_broadcast(self, channel: str, handler: BroadcastHandler) -> bool:
        """Register; True when the channel is new (the transport must subscribe to it)."""
        validate_topic(channel)
        handlers = self.broadcasts.setdefault(channel, [])
        handlers.append(handler)
        return len(handlers) == 1

    async def deliver_broadcast(self, channel: str, payload: dict[str, Any]) -> None:
        for handler in self.broadcasts.get(channel, ()):
            try:
                await handler(payload)
            except Exception:
                _log.exception("broadcast handler failed on channel %s", channel)

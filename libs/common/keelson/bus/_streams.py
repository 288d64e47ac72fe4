"""Durable events on Redis Streams: one stream per topic, one consumer group per `group`.

Layout: `bus:stream:<topic>` holds the events, `bus:topics` the set of known topics (so a
wildcard subscription finds streams that appear later), `bus:dead:<topic>` the events
that failed `max_deliveries` times, `bus:errors:<group>` the last error of each entry that
is waiting for a retry.

An entry is acknowledged only after every handler of the group succeeded. A failed entry
stays pending; it and the entries of a consumer that died are claimed again (XAUTOCLAIM)
once idle for `claim_idle_ms`. Redis counts deliveries, so a crash counts like a failure:
the delivery after the last allowed one goes to the dead-letter stream instead.
A group created on a stream reads it from the start (id 0), so an event published
before its subscriber first started is not lost.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError, ResponseError

from keelson.bus._base import Group, Outcome, handled_counter
from keelson.bus._dedupe import RedisProcessedIds
from keelson.config import BusSettings
from keelson.events import Envelope
from keelson.metrics import BUS_DEAD_LETTERS, BUS_LAG
from keelson.tasks import finish_or_cancel

__all__ = [
    "TOPICS_KEY",
    "GroupConsumer",
    "StreamPublisher",
    "consumer_name",
    "dead_letter_key",
    "stream_key",
]

_log = logging.getLogger("keelson.bus")

TOPICS_KEY = "bus:topics"
_FIELD = b"e"
_MAINTENANCE_SECONDS = 5.0
_REFRESH_SECONDS = 1.0
_IDLE_REFRESH_SECONDS = 0.2
_FORGET_CONSUMER_IDLE_MS = 3_600_000
_STOP_GRACE_SECONDS = 10.0


def stream_key(topic: str) -> str:
    return f"bus:stream:{topic}"


def dead_letter_key(topic: str) -> str:
    return f"bus:dead:{topic}"


def _errors_key(group: str) -> str:
    return f"bus:errors:{group}"


def consumer_name() -> str:
    """Unique per bus instance: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


class StreamPublisher:
    """XADD to the topic's stream, registering the topic the first time this process sees it."""

    def __init__(self, redis: Redis, *, maxlen: int) -> None:
        self.redis = redis
        self.maxlen = maxlen
        self._known_topics: set[str] = set()

    async def publish(self, envelope: Envelope) -> None:
        topic = envelope.type
        if topic not in self._known_topics:
            await self.redis.sadd(TOPICS_KEY, topic)
            self._known_topics.add(topic)
        await self.redis.xadd(
            stream_key(topic), {_FIELD: envelope.to_json()}, maxlen=self.maxlen, approximate=True
        )

    async def publish_many(self, envelopes: Sequence[Envelope]) -> None:
        """XADD each in order, in one pipeline (one round trip; not a MULTI transaction)."""
        new_topics = {e.type for e in envelopes} - self._known_topics
        async with self.redis.pipeline(transaction=False) as pipe:
            if new_topics:
                pipe.sadd(TOPICS_KEY, *sorted(new_topics))
            for envelope in envelopes:
                pipe.xadd(
                    stream_key(envelope.type),
                    {_FIELD: envelope.to_json()},
                    maxlen=self.maxlen,
                    approximate=True,
                )
            await pipe.execute()
        self._known_topics |= new_topics


@dataclass
class _Entry:
    entry_id: bytes | str
    fields: dict[Any, Any]
    deliveries: int


@dataclass
class _Settlement:
    acked: list[bytes | str]
    handled_ids: list[str]
    retried: list[bytes | str]
    failed: list[tuple[bytes | str, str]]
    dead: list[tuple[_Entry, str]]

    @classmethod
    def empty(cls) -> _Settlement:
        return cls([], [], [], [], [])


class GroupConsumer:
    """One consumer of one group: reads, dispatches, acknowledges, reclaims, dead-letters."""

    def __init__(
        self,
        redis: Redis,
        group: Group,
        *,
        consumer: str,
        settings: BusSettings,
        processed: RedisProcessedIds,
    ) -> None:
        self.redis = redis
        self.group = group
        self.consumer = consumer
        self.settings = settings
        self.processed = processed
        self.ready = asyncio.Event()
        self._streams: dict[str, str] = {}
        self._stopping = False
        self._refresh_due = True
        self._next_refresh = 0.0
        self._next_reclaim = 0.0
        self._next_maintenance = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def _has_wildcards(self) -> bool:
        return any(not pattern.is_exact for pattern in self.group.all_patterns)

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=f"bus-consumer-{self.group.name}")

    def refresh_soon(self) -> None:
        self._refresh_due = True
        self.ready.clear()

    async def stop(self) -> None:
        """Finish the read in flight and the batch it returns, then stop."""
        self._stopping = True
        if self._task is None:
            return
        timeout = self.settings.block_ms / 1000 + _STOP_GRACE_SECONDS
        await finish_or_cancel(self._task, timeout)
        self._task = None

    async def _run(self) -> None:
        backoff = 0.1
        while not self._stopping:
            try:
                await self._tick()
                backoff = 0.1
                continue
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    # A stream or its group was deleted under us: create them again.
                    self._streams.clear()
                    self._refresh_due = True
                    continue
                _log.warning("bus consumer %s: %s", self.group.name, _short(exc))
            except (RedisError, OSError) as exc:
                _log.warning("bus consumer %s lost Redis: %s", self.group.name, _short(exc))
            except Exception:
                # Keep consuming: what was read and not acknowledged is claimed again later.
                _log.exception("bus consumer %s failed; continuing", self.group.name)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _tick(self) -> None:
        now = time.monotonic()
        if self._refresh_due or now >= self._next_refresh:
            await self._refresh()
            self._next_refresh = now + _REFRESH_SECONDS
        if now >= self._next_reclaim:
            await self._reclaim()
            self._next_reclaim = now + max(self.settings.claim_idle_ms / 2000, 0.1)
        if now >= self._next_maintenance:
            await self._maintain()
            self._next_maintenance = now + _MAINTENANCE_SECONDS
        if not self._streams:
            self._next_refresh = min(self._next_refresh, now + _IDLE_REFRESH_SECONDS)
            await asyncio.sleep(min(self.settings.block_ms / 1000, _IDLE_REFRESH_SECONDS))
            return
        response = await self.redis.xreadgroup(
            self.group.name,
            self.consumer,
            dict.fromkeys(self._streams, ">"),
            count=self.settings.batch_size,
            block=self.settings.block_ms,
        )
        if not response and self._has_wildcards:
            # Idle: look for new topics sooner than the regular refresh.
            self._next_refresh = min(self._next_refresh, now + _IDLE_REFRESH_SECONDS)
        for stream, entries in _stream_replies(response):
            stream_name = _text(stream)
            batch = [_Entry(entry_id, fields, 1) for entry_id, fields in entries]
            await self._handle(stream_name, self._streams[stream_name], batch, {})

    async def _refresh(self) -> None:
        """Find the streams the group's patterns match; create the group on new ones."""
        self._refresh_due = False
        patterns = self.group.all_patterns
        topics = {p.text for p in patterns if p.is_exact}
        wildcards = [p for p in patterns if not p.is_exact]
        if wildcards:
            known = {_text(t) for t in await self.redis.smembers(TOPICS_KEY)}
            topics.update(t for t in known if any(p.matches(t) for p in wildcards))
        for topic in sorted(topics):
            key = stream_key(topic)
            if key in self._streams:
                continue
            try:
                await self.redis.xgroup_create(key, self.group.name, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._streams[key] = topic
        self.ready.set()

    async def _handle(
        self,
        stream: str,
        topic: str,
        entries: Sequence[_Entry],
        previous_errors: dict[str, str],
    ) -> None:
        """Decode, deduplicate, dispatch and settle a batch; `previous_errors` by entry id."""
        outcome = _Settlement.empty()
        decoded = self._decode(entries, previous_errors, outcome)
        seen: set[str] = set()
        if self.group.dedupe and decoded:
            seen = await self.processed.seen(self.group.name, [e.id for _, e in decoded])
        duplicates = 0
        todo: list[tuple[_Entry, Envelope]] = []
        for entry, envelope in decoded:
            if envelope.id in seen:
                outcome.acked.append(entry.entry_id)
                duplicates += 1
                continue
            if self.group.dedupe:
                seen.add(envelope.id)  # the same event twice in one batch
            todo.append((entry, envelope))
        if todo:
            failed = await self.group.dispatch_batch(topic, [envelope for _, envelope in todo])
            for entry, envelope in todo:
                self._settle_one(topic, entry, envelope, failed.get(envelope.id), outcome)
        if outcome.handled_ids:
            handled_counter(topic, self.group.name, Outcome.OK).inc(len(outcome.handled_ids))
        if duplicates:
            handled_counter(topic, self.group.name, Outcome.DUPLICATE).inc(duplicates)
        await self._settle(stream, topic, outcome)

    def _decode(
        self, entries: Sequence[_Entry], previous_errors: dict[str, str], outcome: _Settlement
    ) -> list[tuple[_Entry, Envelope]]:
        """The envelopes to handle; entries past their deliveries or unreadable go dead."""
        decoded: list[tuple[_Entry, Envelope]] = []
        for entry in entries:
            if entry.deliveries > self.settings.max_deliveries:
                error = previous_errors.get(_text(entry.entry_id)) or (
                    f"not acknowledged after {entry.deliveries - 1} deliveries "
                    "(its consumer failed or stopped)"
                )
                outcome.dead.append((entry, error))
                continue
            try:
                decoded.append((entry, Envelope.from_json(_payload(entry.fields))))
            except (KeyError, ValidationError, ValueError) as exc:
                outcome.dead.append((entry, f"undecodable entry: {_short(exc)}"))
        return decoded

    def _settle_one(
        self,
        topic: str,
        entry: _Entry,
        envelope: Envelope,
        error: Exception | None,
        outcome: _Settlement,
    ) -> None:
        """Record in `outcome` an ack, or for a failed event a retry or a dead letter."""
        if error is None:
            outcome.acked.append(entry.entry_id)
            outcome.handled_ids.append(envelope.id)
            if entry.deliveries > 1:
                outcome.retried.append(entry.entry_id)
            return
        limit = self.settings.max_deliveries
        _log.warning(
            "bus handler of group %s failed on %s %s (delivery %d of %d)",
            self.group.name,
            topic,
            envelope.id,
            entry.deliveries,
            limit,
            exc_info=error,
        )
        handled_counter(topic, self.group.name, Outcome.ERROR).inc()
        if entry.deliveries >= limit:
            outcome.dead.append((entry, _short(error)))
        else:
            outcome.failed.append((entry.entry_id, _short(error)))

    async def _settle(self, stream: str, topic: str, outcome: _Settlement) -> None:
        """Acknowledge, record errors and dead-letter, in one round trip."""
        if not (outcome.acked or outcome.failed or outcome.dead):
            return
        plain = not (outcome.failed or outcome.dead or outcome.retried)
        if plain and not self.group.dedupe:
            await self.redis.xack(stream, self.group.name, *outcome.acked)  # the common case
            return
        errors_key = _errors_key(self.group.name)
        async with self.redis.pipeline(transaction=False) as pipe:
            if outcome.acked:
                pipe.xack(stream, self.group.name, *outcome.acked)
            if self.group.dedupe and outcome.handled_ids:
                self.processed.mark_in(pipe, self.group.name, outcome.handled_ids)
            if outcome.retried:
                pipe.hdel(errors_key, *[_error_field(topic, i) for i in outcome.retried])
            for entry_id, error in outcome.failed:
                pipe.hset(errors_key, _error_field(topic, entry_id), error)
            for entry, error in outcome.dead:
                self._dead_letter_in(pipe, stream, topic, entry, error)
            await pipe.execute()
        for entry, error in outcome.dead:
            self._report_dead(topic, entry, error)

    def _dead_letter_in(
        self, pipe: Pipeline, stream: str, topic: str, entry: _Entry, error: str
    ) -> None:
        """Queue: copy to the dead-letter stream, acknowledge, forget the last error."""
        pipe.xadd(
            dead_letter_key(topic),
            {
                _FIELD: entry.fields.get(_FIELD) or entry.fields.get("e") or b"",
                b"error": error,
                b"group": self.group.name,
                b"source_id": entry.entry_id,
                b"deliveries": entry.deliveries,
                b"consumer": self.consumer,
                b"dead_at": datetime.now(UTC).isoformat(),
            },
            maxlen=self.settings.stream_maxlen,
            approximate=True,
        )
        pipe.xack(stream, self.group.name, entry.entry_id)
        pipe.hdel(_errors_key(self.group.name), _error_field(topic, entry.entry_id))

    def _report_dead(self, topic: str, entry: _Entry, error: str) -> None:
        BUS_DEAD_LETTERS.labels(topic).inc()
        handled_counter(topic, self.group.name, Outcome.DEAD).inc()
        _log.error(
            "bus entry %s of %s dead-lettered to %s for group %s after %d deliveries: %s",
            _text(entry.entry_id),
            topic,
            dead_letter_key(topic),
            self.group.name,
            entry.deliveries,
            error,
        )

    async def _reclaim(self) -> None:
        """Claim entries idle for `claim_idle_ms` (failed here, or of a dead consumer)."""
        for stream, topic in list(self._streams.items()):
            start: bytes | str = "0-0"
            for _ in range(100):
                reply = await self.redis.xautoclaim(
                    stream,
                    self.group.name,
                    self.consumer,
                    min_idle_time=self.settings.claim_idle_ms,
                    start_id=start,
                    count=self.settings.batch_size,
                )
                start, claimed = reply[0], reply[1]
                deleted = reply[2] if len(reply) > 2 else []
                if deleted:
                    fields = [_error_field(topic, i) for i in deleted]
                    await self.redis.hdel(_errors_key(self.group.name), *fields)
                if claimed:
                    await self._retry(stream, topic, claimed)
                if _text(start) == "0-0" or self._stopping:
                    break

    async def _retry(self, stream: str, topic: str, claimed: Iterable[Any]) -> None:
        claimed = [(entry_id, fields) for entry_id, fields in claimed if fields is not None]
        if not claimed:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id, _ in claimed:
                pipe.xpending_range(stream, self.group.name, entry_id, entry_id, 1)
            pipe.hmget(_errors_key(self.group.name), [_error_field(topic, i) for i, _ in claimed])
            *pending, errors = await pipe.execute()
        deliveries = {_text(p[0]["message_id"]): p[0]["times_delivered"] for p in pending if p}
        entries = [
            _Entry(entry_id, fields, deliveries[_text(entry_id)])
            for entry_id, fields in claimed
            if _text(entry_id) in deliveries
        ]
        previous = {
            _text(entry_id): _text(error)
            for (entry_id, _), error in zip(claimed, errors, strict=True)
            if error is not None
        }
        await self._handle(stream, topic, entries, previous)

    async def _maintain(self) -> None:
        """Publish the lag gauge; forget long-idle consumers that hold nothing."""
        for stream in list(self._streams):
            for info in await self.redis.xinfo_groups(stream):
                if _text(info["name"]) == self.group.name:
                    BUS_LAG.labels(stream, self.group.name).set(info.get("lag") or 0)
            for info in await self.redis.xinfo_consumers(stream, self.group.name):
                name = _text(info["name"])
                idle_forever = info["idle"] > _FORGET_CONSUMER_IDLE_MS
                if name != self.consumer and info["pending"] == 0 and idle_forever:
                    await self.redis.xgroup_delconsumer(stream, self.group.name, name)


def _stream_replies(response: list[Any] | dict[Any, Any] | None) -> list[tuple[Any, Any]]:
    """XREADGROUP's reply as (stream, entries) pairs, in RESP2 or RESP3 shape."""
    if not response:
        return []
    if isinstance(response, dict):
        # RESP3: {stream: [entries]}
        return [(stream, value[0] if value else []) for stream, value in response.items()]
    return [(stream, entries) for stream, entries in response]


def _payload(fields: dict[Any, Any]) -> bytes | str:
    payload = fields.get(_FIELD)
    if payload is None:
        payload = fields[_FIELD.decode()]  # a client with decode_responses=True
    return payload  # type: ignore[no-any-return]


def _error_field(topic: str, entry_id: bytes | str) -> str:
    return f"{topic}/{_text(entry_id)}"

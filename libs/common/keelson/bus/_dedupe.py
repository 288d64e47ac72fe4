"""Processed event ids, so a group's handlers can skip an event delivered twice.

An id is marked after the group's handlers succeed, so a crash between the two leaves
it unmarked and the event is handled again: this narrows duplicates, it cannot exclude
them. For exactly-once effects, record the id in the same database transaction as the
effect (`keelson.outbox.mark_processed`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

__all__ = ["MemoryProcessedIds", "ProcessedIds", "RedisProcessedIds"]


class ProcessedIds(Protocol):
    async def seen(self, group: str, ids: Sequence[str]) -> set[str]:
        """The subset of `ids` already marked for `group`."""

    async def mark(self, group: str, ids: Sequence[str]) -> None: ...


class RedisProcessedIds:
    """One key per (group, id) with a TTL: `bus:seen:<group>:<id>`."""

    def __init__(self, redis: Redis, *, ttl_seconds: int = 7 * 24 * 3600) -> None:
        self.redis = redis
        self.ttl_seconds = ttl_seconds

    @staticmethod
    def key(group: str, event_id: str) -> str:
        return f"bus:seen:{group}:{event_id}"

    async def seen(self, group: str, ids: Sequence[str]) -> set[str]:
        if not ids:
            return set()
        values = await self.redis.mget([self.key(group, i) for i in ids])
        return {i for i, value in zip(ids, values, strict=True) if value is not None}

    def mark_in(self, pipe: Pipeline, group: str, ids: Sequence[str]) -> None:
        """Queue the marks on a pipeline the caller executes (with its acknowledgements)."""
        for event_id in ids:
            pipe.set(self.key(group, event_id), b"1", ex=self.ttl_seconds)

    async def mark(self, group: str, ids: Sequence[str]) -> None:
        if ids:
            async with self.redis.pipeline(transaction=False) as pipe:
                self.mark_in(pipe, group, ids)
                await pipe.execute()


class MemoryProcessedIds:
    """The most recent `max_ids` ids per group, in this process only."""

    def __init__(self, *, max_ids: int = 100_000) -> None:
        self.max_ids = max_ids
        self._groups: dict[str, OrderedDict[str, None]] = {}

    async def seen(self, group: str, ids: Sequence[str]) -> set[str]:
        known = self._groups.get(group)
        if known is None:
            return set()
        return {i for i in ids if i in known}

    async def mark(self, group: str, ids: Sequence[str]) -> None:
        known = self._groups.setdefault(group, OrderedDict())
        for event_id in ids:
            known[event_id] = None
            known.move_to_end(event_id)
        while len(known) > self.max_ids:
            known.popitem(last=False)

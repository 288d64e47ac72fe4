"""In-process fan-out of committed records to live-tail subscribers."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from logs_service.metrics import TAIL_DROPPED
from logs_service.records import LogRow, row_to_dict

__all__ = ["TailHub", "TailSubscription"]


class TailSubscription:
    """One client's filter and queue; a client too slow to keep up misses records."""

    def __init__(self, *, service: str | None, min_level: int | None, size: int) -> None:
        self.service = service
        self.min_level = min_level
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(size)

    def wants(self, row: LogRow) -> bool:
        if self.service is not None and row.service != self.service:
            return False
        return self.min_level is None or row.level >= self.min_level

    def offer(self, record: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(record)
        except asyncio.QueueFull:
            TAIL_DROPPED.inc()

    async def next_records(self, timeout: float) -> list[dict[str, Any]]:
        """What has arrived, waiting up to `timeout` for the first; [] on timeout."""
        try:
            first = await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return []
        records = [first]
        while not self.queue.empty():
            records.append(self.queue.get_nowait())
        return records


class TailHub:
    def __init__(self, *, queue_size: int = 1000) -> None:
        self.queue_size = queue_size
        self._subscriptions: set[TailSubscription] = set()

    @property
    def subscribers(self) -> int:
        return len(self._subscriptions)

    def subscribe(self, *, service: str | None, min_level: int | None) -> TailSubscription:
        subscription = TailSubscription(service=service, min_level=min_level, size=self.queue_size)
        self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: TailSubscription) -> None:
        self._subscriptions.discard(subscription)

    def publish(self, rows: Sequence[LogRow]) -> None:
        if not self._subscriptions:
            return
        for row in rows:
            wanted = [s for s in self._subscriptions if s.wants(row)]
            if wanted:
                record = row_to_dict(row)
                for subscription in wanted:
                    subscription.offer(record)

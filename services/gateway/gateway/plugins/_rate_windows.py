"""Where the rate_limiting plugin counts: limits' storages, made cheap per hit.

Redis: hits and window reads go out in batches, one round trip each (`RedisHits`).
Memory: one synchronous call per hit on limits' own counters (`MemoryWindows`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from typing import Any, Protocol

from limits.aio.storage import MemoryStorage, RedisStorage
from limits.errors import StorageError
from redis import RedisError
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

_log = logging.getLogger("gateway.rate_limiting")


class RedisOnlyStorage(RedisStorage):
    """limits' async Redis storage, importing only redis-py.

    The stock class imports every client it could use (redis-py, valkey, coredis) the
    first time it looks for one: about a megabyte of resident memory for nothing.
    """

    # No minimum here: the workspace pins redis>=5.2, which limits needs.
    DEPENDENCIES = {"redis": None}


class MemoryWindows(MemoryStorage):
    """limits' in-process storage, with the sliding-window hit and stats read as one call.

    `hit_now` does what `SlidingWindowCounterRateLimiter.hit` then `get_window_stats`
    do, on the same counters, with the same arithmetic, at one instant and without
    awaiting anything. The async path costs ten awaited calls per hit, and each `incr`
    schedules a task that scans every key for expiry: per hit, the cost grows with the
    number of clients. Here expired keys are dropped on read (as limits does) and swept
    at most every `_SWEEP_SECONDS`. No lock is needed: nothing yields in between.
    """

    _SWEEP_SECONDS = 10.0

    def __init__(self) -> None:
        super().__init__()
        self._sweep_at = 0.0

    def hit_now(self, key: str, limit: int, expiry: int) -> tuple[bool, int, float]:
        """Count one hit: (allowed, remaining, reset epoch seconds)."""
        now = time.time()
        if now >= self._sweep_at:
            self._sweep(now)
        previous_key, current_key = self.sliding_window_keys(key, expiry, now)
        previous = self._count(previous_key, now)
        current = self._count(current_key, now)
        previous_ttl = (1 - (((now - expiry) / expiry) % 1)) * expiry if previous else 0.0
        allowed = math.floor(previous * previous_ttl / expiry + current) + 1 <= limit
        if allowed:
            current += 1
            self.storage[current_key] = current
            if current == 1:
                self.expirations[current_key] = now + 2 * expiry
        current_ttl = (1 - ((now / expiry) % 1)) * expiry + expiry
        return (
            allowed,
            *window_stats(limit, expiry, previous, previous_ttl, current, current_ttl, now),
        )

    def _count(self, key: str, now: float) -> int:
        if self.expirations.get(key, 0) <= now:
            self._forget(key)
        return self.storage.get(key, 0)

    def _sweep(self, now: float) -> None:
        self._sweep_at = now + self._SWEEP_SECONDS
        for key in [k for k, at in self.expirations.items() if at <= now]:
            self._forget(key)

    def _forget(self, key: str) -> None:
        """Drop an expired window's counter, as limits' own expiry does."""
        self.storage.pop(key, None)
        self.expirations.pop(key, None)
        self.locks.pop(key, None)


def window_stats(
    limit: int,
    expiry: int,
    previous: int,
    previous_ttl: float,
    current: int,
    current_ttl: float,
    now: float,
) -> tuple[int, float]:
    """(remaining, reset epoch seconds), as limits' `SlidingWindowCounterRateLimiter` says."""
    remaining = max(0, limit - math.floor(previous * previous_ttl / expiry + current))
    if not (previous or current):
        return remaining, now
    previous_reset_in = previous_ttl % (expiry / previous) if previous else math.inf
    current_reset_in = current_ttl % expiry if current else math.inf
    return remaining, now + min(previous_reset_in, current_reset_in)


class Answer(Protocol):
    """Where a queued hit's answer goes: an awaited future, or a hit admitted without one."""

    def done(self) -> bool: ...
    def set_result(self, result: bool) -> None: ...
    def set_exception(self, exception: BaseException) -> None: ...


# One call of limits' sliding-window script: window keys, limit, expiry, amount.
Call = tuple[tuple[str, str], int, int, int]
# A window as limits' storage reads it: previous count, its TTL, current count, its TTL.
_Window = tuple[int, float, int, float]


class RedisHits:
    """Sliding-window hits in Redis, sent in pipelines: one round trip per batch.

    Hits that arrive while a round trip is under way wait for the next one and share it.
    The hits of one batch on one key are one call of limits' atomic Lua script with
    amount=n, which takes all n or none: when all fit, that is what n calls in a row
    would have answered. When they do not, the key's hits go again as one call each, in
    arrival order, so the counts and answers are exactly those of one call per hit; a
    key refused lately goes as one call per hit straight away.

    A hit is either awaited (`hit`: it goes in the next round trip) or sent later
    (`hit_later`, for a request already admitted): those wait up to `linger` seconds for
    the next round trip, so that many share one call, and a round trip with only them
    left does not start another at once.

    Window reads (for the RateLimit-* headers) are queued the same way, after the hits:
    the reads of one key in one batch are one call of limits' read script, each read
    having been asked for after its own hit was answered.
    """

    def __init__(self, storage: RedisStorage, *, linger: float = 0.005) -> None:
        self.storage = storage
        bridge: Any = storage.bridge
        self.client: Redis = bridge.get_connection()
        self.script = bridge.lua_acquire_sliding_window
        self.read_script = bridge.lua_sliding_window
        self.linger = linger
        self.loop = asyncio.get_running_loop()
        self.queue: list[tuple[tuple[str, str], int, int, Answer]] = []
        self.awaited = 0  # hits in `queue` whose callers wait for their answer
        self.reads: dict[tuple[str, str], tuple[int, list[asyncio.Future[_Window]]]] = {}
        self.sender: asyncio.Task[None] | None = None
        self.lingering: asyncio.TimerHandle | None = None
        self.strained: set[tuple[str, str]] = set()  # keys with a refusal in their last batch

    def window_keys(self, key: str) -> tuple[str, str]:
        """The (previous, current) Redis keys of limits' key, as its storage names them."""
        storage: Any = self.storage
        prefixed = storage.bridge.prefixed_key
        return (
            prefixed(storage._previous_window_key(key)),
            prefixed(storage._current_window_key(key)),
        )

    async def hit(self, keys: tuple[str, str], limit: int, expiry: int) -> bool:
        future: asyncio.Future[bool] = self.loop.create_future()
        self.queue.append((keys, limit, expiry, future))
        self.awaited += 1
        self._send_now()
        return await future

    def hit_later(self, keys: tuple[str, str], limit: int, expiry: int, answer: Answer) -> None:
        """Count a hit within `linger` seconds; its answer goes to `answer`."""
        self.queue.append((keys, limit, expiry, answer))
        if self.sender is None:
            self._send_later()

    async def window(self, keys: tuple[str, str], expiry: int) -> _Window:
        """(previous count, its TTL, current count, its TTL), as limits' storage reads it."""
        future: asyncio.Future[_Window] = self.loop.create_future()
        self.reads.setdefault(keys, (expiry, []))[1].append(future)
        self._send_now()
        return await future

    async def close(self) -> None:
        """Send everything queued, the lingering hits included, and wait for it."""
        while self.queue or self.reads or self.sender is not None:
            self._send_now()
            if self.sender is not None:
                await asyncio.shield(self.sender)

    def _send_later(self) -> None:
        if self.lingering is None:
            self.lingering = self.loop.call_later(self.linger, self._send_now)

    def _send_now(self) -> None:
        if self.lingering is not None:
            self.lingering.cancel()
            self.lingering = None
        if self.sender is None and (self.queue or self.reads):
            self.sender = self.loop.create_task(self._send_all())

    async def _send_all(self) -> None:
        hits: list[Answer] = []  # the round trip under way, failed too if it is cancelled
        waiting: list[list[asyncio.Future[_Window]]] = []
        try:
            while True:
                if self.queue:
                    batch, self.queue, self.awaited = self.queue, [], 0
                    hits = [answer for *_, answer in batch]
                    try:
                        _answer(hits, await self._count(batch))
                    except Exception as exc:
                        _fail(hits, _logged(exc))
                    hits = []
                if self.reads:
                    reads, self.reads = self.reads, {}
                    waiting = [readers for _, readers in reads.values()]
                    try:
                        windows = await self._read(reads)
                    except Exception as exc:
                        for readers in waiting:
                            _fail(readers, _logged(exc))
                    else:
                        for readers, window in zip(waiting, windows, strict=True):
                            _answer(readers, [window] * len(readers))
                    waiting = []
                if not (self.awaited or self.reads):
                    break
        except BaseException:
            # Stopped (cancelled at shutdown): whoever still waits gets the storage's error,
            # which fails open or closed as configured, rather than a cancellation.
            stopped = RuntimeError("rate-limit sender stopped")
            _fail([*hits, *(answer for *_, answer in self.queue)], stopped)
            for readers in waiting:
                _fail(readers, stopped)
            for _, readers in self.reads.values():
                _fail(readers, stopped)
            self.queue.clear()
            self.reads.clear()
            self.awaited = 0
            raise
        finally:
            self.sender = None
        if self.queue:  # only hits sent later are left: they linger for the next round
            self._send_later()

    async def _count(self, batch: list[tuple[tuple[str, str], int, int, Answer]]) -> list[bool]:
        by_key: dict[tuple[str, str], list[int]] = {}
        for i, (keys, *_) in enumerate(batch):
            by_key.setdefault(keys, []).append(i)
        calls: list[tuple[Call, list[int]]] = []
        for keys, hits in by_key.items():
            _, limit, expiry, _ = batch[hits[0]]
            if len(hits) == 1 or keys not in self.strained:
                calls.append(((keys, limit, expiry, len(hits)), hits))
            else:
                calls += [((keys, limit, expiry, 1), [i]) for i in hits]
        allowed = [False] * len(batch)
        again: list[tuple[Call, list[int]]] = []
        for (call, hits), reply in zip(calls, await self._send([c for c, _ in calls]), strict=True):
            if reply:
                for i in hits:
                    allowed[i] = True
            elif call[3] > 1:
                again += [((*call[:3], 1), [i]) for i in hits]
        if again:
            replies = await self._send([c for c, _ in again])
            for (_, [i]), reply in zip(again, replies, strict=True):
                allowed[i] = bool(reply)
        if len(self.strained) >= 10_000:
            self.strained.clear()
        for keys, hits in by_key.items():
            if all(allowed[i] for i in hits):
                self.strained.discard(keys)
            else:
                self.strained.add(keys)
        return allowed

    async def _read(self, reads: dict[tuple[str, str], tuple[int, list[Any]]]) -> list[_Window]:
        calls = [(*keys, expiry) for keys, (expiry, _) in reads.items()]
        windows = []
        for reply in await self._eval(self.read_script, calls):
            if reply:  # parsed as limits' redis-py bridge parses it
                windows.append(
                    (
                        int(reply[0] or 0),
                        max(0, float(reply[1] or 0)) / 1000,
                        int(reply[2] or 0),
                        max(0, float(reply[3] or 0)) / 1000,
                    )
                )
            else:
                windows.append((0, 0.0, 0, 0.0))
        return windows

    async def _send(self, calls: list[Call]) -> list[Any]:
        rows = [(*keys, limit, expiry, amount) for keys, limit, expiry, amount in calls]
        return await self._eval(self.script, rows)

    async def _eval(self, script: Any, calls: Sequence[tuple[str | int, ...]]) -> list[Any]:
        """Each call of `script` (two keys, then its arguments), in one round trip."""
        if len(calls) == 1:  # a quiet moment: a plain call costs less than a pipeline
            try:
                return [await self.client.evalsha(script.sha, 2, *calls[0])]
            except NoScriptError:
                await self.client.script_load(script.script)
                return [await self.client.evalsha(script.sha, 2, *calls[0])]
        pipe = self.client.pipeline(transaction=False)
        for call in calls:
            pipe.evalsha(script.sha, 2, *call)
        try:
            results: list[Any] = await pipe.execute()
        except NoScriptError:
            # A restarted or flushed Redis forgot the script: nothing ran, so send it all again.
            await self.client.script_load(script.script)
            results = await self._eval(script, calls)
        return results


def _answer(futures: Sequence[Answer | asyncio.Future[Any]], results: list[Any]) -> None:
    for future, result in zip(futures, results, strict=True):
        if not future.done():  # a caller that gave up (timeout, disconnect) is skipped
            future.set_result(result)


def _logged(exc: Exception) -> Exception:
    """`exc`, logged unless it is the storage's expected kind of failure (Redis, network)."""
    if not isinstance(exc, RedisError | OSError):
        _log.error("rate-limit round trip failed", exc_info=exc)
    return exc


def _fail(futures: Sequence[Answer | asyncio.Future[Any]], exc: Exception) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(StorageError(exc))

"""Where the rate_limiting plugin counts sliding windows: in memory, or in Redis.

Memory: one synchronous call per hit (`MemoryWindows`).
Redis: one Lua script of ours (`SLIDING_WINDOW`, through redis-py's `register_script`)
counts a hit and reads its window in one call; hits go out in batches, one round trip
each (`RedisHits`). Both count as limits' `SlidingWindowCounterRateLimiter` does, whose
moving-window sibling the plugin still uses through limits' public API.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from typing import Any, Protocol

from limits.errors import StorageError
from redis import RedisError
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

_log = logging.getLogger("gateway.rate_limiting")

# The sliding-window counter (a weighted previous window plus the current one), as limits'
# Redis storage keeps it, so windows counted before carry over. KEYS: previous, current
# window; ARGV: limit, expiry (s), amount. All `amount` hits are taken or none. Answers
# {allowed (1/0), previous count, its TTL (ms), current count, its TTL (ms)} after the hits.
SLIDING_WINDOW = """
local limit = tonumber(ARGV[1])
local expiry = tonumber(ARGV[2]) * 1000
local amount = tonumber(ARGV[3])
local current_ttl = tonumber(redis.call('pttl', KEYS[2]))
if current_ttl > 0 and current_ttl < expiry then
    -- the current window ended: it becomes the previous one
    redis.call('rename', KEYS[2], KEYS[1])
    redis.call('set', KEYS[2], 0, 'PX', current_ttl + expiry)
end
local previous = tonumber(redis.call('get', KEYS[1])) or 0
local previous_ttl = math.max(tonumber(redis.call('pttl', KEYS[1])), 0)
local current = tonumber(redis.call('get', KEYS[2])) or 0
current_ttl = math.max(tonumber(redis.call('pttl', KEYS[2])), 0)
local allowed = 0
if amount <= limit and math.floor(previous * previous_ttl / expiry) + current + amount <= limit then
    allowed = 1
    if redis.call('exists', KEYS[2]) == 1 then
        redis.call('incrby', KEYS[2], amount)
    else
        redis.call('set', KEYS[2], amount, 'PX', expiry * 2)
        current_ttl = expiry * 2
    end
    current = current + amount
end
return {allowed, previous, previous_ttl, current, current_ttl}
"""


class MemoryWindows:
    """Sliding windows in this process, counted as limits' memory storage counts them.

    `hit_now` does what `SlidingWindowCounterRateLimiter.hit` then `get_window_stats` do
    on limits' `MemoryStorage`, with the same arithmetic, at one instant and without
    awaiting anything. Expired counters are dropped on read and swept at most every
    `_SWEEP_SECONDS`. No lock is needed: nothing yields in between.
    """

    _SWEEP_SECONDS = 10.0

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.expirations: dict[str, float] = {}
        self._sweep_at = 0.0
        # By limit key: its (previous, current) window numbers and counter keys, last made.
        # A window lasts `expiry` seconds: the keys are formatted once a window, not a hit.
        self._windows: dict[str, tuple[int, int, str, str]] = {}

    def hit_now(self, key: str, limit: int, expiry: int) -> tuple[bool, int, float]:
        """Count one hit: (allowed, remaining, reset epoch seconds)."""
        now = time.time()
        if now >= self._sweep_at:
            self._sweep(now)
        previous_window, current_window = int((now - expiry) / expiry), int(now / expiry)
        windows = self._windows.get(key)
        if windows is None or windows[0] != previous_window or windows[1] != current_window:
            if len(self._windows) >= 100_000:  # a bound on memory; only a cache
                self._windows.clear()
            windows = self._windows[key] = (
                previous_window,
                current_window,
                f"{key}/{previous_window}",
                f"{key}/{current_window}",
            )
        previous_key, current_key = windows[2], windows[3]
        previous = self._count(previous_key, now)
        current = self._count(current_key, now)
        previous_ttl = (1 - (((now - expiry) / expiry) % 1)) * expiry if previous else 0.0
        allowed = math.floor(previous * previous_ttl / expiry + current) + 1 <= limit
        if allowed:
            current += 1
            self.counts[current_key] = current
            if current == 1:
                self.expirations[current_key] = now + 2 * expiry
        current_ttl = (1 - ((now / expiry) % 1)) * expiry + expiry
        remaining, reset_at = window_stats(
            limit, expiry, previous, previous_ttl, current, current_ttl, now
        )
        return allowed, remaining, reset_at

    def check(self) -> bool:
        return True

    def _count(self, key: str, now: float) -> int:
        expires = self.expirations.get(key)
        if expires is None:  # nor in `counts`: the two are set and dropped together
            return 0
        if expires <= now:
            self._forget(key)
            return 0
        return self.counts.get(key, 0)

    def _sweep(self, now: float) -> None:
        self._sweep_at = now + self._SWEEP_SECONDS
        for key in [k for k, at in self.expirations.items() if at <= now]:
            self._forget(key)

    def _forget(self, key: str) -> None:
        self.counts.pop(key, None)
        self.expirations.pop(key, None)


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
    # Conditionals, not max() and min(): each builtin call costs as much as the arithmetic.
    remaining = limit - math.floor(previous * previous_ttl / expiry + current)
    if remaining < 0:
        remaining = 0
    if not (previous or current):
        return remaining, now
    previous_reset_in = previous_ttl % (expiry / previous) if previous else math.inf
    current_reset_in = current_ttl % expiry if current else math.inf
    if current_reset_in < previous_reset_in:
        return remaining, now + current_reset_in
    return remaining, now + previous_reset_in


# A window as the script answers it: previous count, its TTL (s), current count, its TTL (s).
Window = tuple[int, float, int, float]
# A hit's answer: whether it was allowed, and its window right after.
Hit = tuple[bool, Window]
# One call of the script: window keys, limit, expiry, amount.
Call = tuple[tuple[str, str], int, int, int]


class Answer(Protocol):
    """Where a queued hit's answer goes: an awaited future, or a hit admitted without one."""

    def done(self) -> bool: ...
    def set_result(self, result: Hit) -> None: ...
    def set_exception(self, exception: BaseException) -> None: ...


class RedisHits:
    """Sliding-window hits in Redis, sent in pipelines: one round trip per batch.

    Hits that arrive while a round trip is under way wait for the next one and share it.
    The hits of one batch on one key are one call of the script with amount=n, which takes
    all n or none: when all fit, that is what n calls in a row would have answered. When
    they do not, the key's hits go again as one call each, in arrival order, so the counts
    and answers are exactly those of one call per hit; a key refused lately goes as one
    call per hit straight away. Each hit is answered with its window as the call left it.

    A hit is either awaited (`hit`: it goes in the next round trip) or sent later
    (`hit_later`, for a request already admitted): those wait up to `linger` seconds for
    the next round trip, so that many share one call, and a round trip with only them
    left does not start another at once.
    """

    def __init__(self, client: Redis, *, key_prefix: str, linger: float = 0.005) -> None:
        self.client = client
        self.script = client.register_script(SLIDING_WINDOW)
        self.key_prefix = key_prefix
        self.linger = linger
        self.loop = asyncio.get_running_loop()
        self.queue: list[tuple[tuple[str, str], int, int, Answer]] = []
        self.awaited = 0  # hits in `queue` whose callers wait for their answer
        self.sender: asyncio.Task[None] | None = None
        self.lingering: asyncio.TimerHandle | None = None
        self.strained: set[tuple[str, str]] = set()  # keys with a refusal in their last batch

    def window_keys(self, key: str) -> tuple[str, str]:
        """The (previous, current) Redis keys of a limit's key, as limits' storage names
        them (braces keep both on one Redis Cluster node)."""
        current = f"{self.key_prefix}:{{{key}}}"
        return f"{current}/-1", current

    async def hit(self, keys: tuple[str, str], limit: int, expiry: int) -> Hit:
        future: asyncio.Future[Hit] = self.loop.create_future()
        self.queue.append((keys, limit, expiry, future))
        self.awaited += 1
        self._send_now()
        return await future

    def hit_later(self, keys: tuple[str, str], limit: int, expiry: int, answer: Answer) -> None:
        """Count a hit within `linger` seconds; its answer goes to `answer`."""
        self.queue.append((keys, limit, expiry, answer))
        if self.sender is None:
            self._send_later()

    async def close(self) -> None:
        """Send everything queued, the lingering hits included, and wait for it."""
        while self.queue or self.sender is not None:
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
        if self.sender is None and self.queue:
            self.sender = self.loop.create_task(self._send_all())

    async def _send_all(self) -> None:
        hits: list[Answer] = []  # the round trip under way, failed too if it is cancelled
        try:
            while True:
                batch, self.queue, self.awaited = self.queue, [], 0
                hits = [queued[3] for queued in batch]
                try:
                    _answer(hits, await self._count(batch))
                except Exception as exc:
                    _fail(hits, _logged(exc))
                hits = []
                if not self.awaited:
                    break
        except BaseException:
            # Stopped (cancelled at shutdown): whoever still waits gets the storage's error,
            # which fails open or closed as configured, rather than a cancellation.
            stopped = RuntimeError("rate-limit sender stopped")
            _fail([*hits, *(answer for *_, answer in self.queue)], stopped)
            self.queue.clear()
            self.awaited = 0
            raise
        finally:
            self.sender = None
        if self.queue:  # only hits sent later are left: they linger for the next round
            self._send_later()

    async def _count(self, batch: list[tuple[tuple[str, str], int, int, Answer]]) -> list[Hit]:
        by_key: dict[tuple[str, str], list[int]] = {}
        for i, queued in enumerate(batch):
            by_key.setdefault(queued[0], []).append(i)
        calls: list[tuple[Call, list[int]]] = []
        for keys, hits in by_key.items():
            _, limit, expiry, _ = batch[hits[0]]
            if len(hits) == 1 or keys not in self.strained:
                calls.append(((keys, limit, expiry, len(hits)), hits))
            else:
                calls += [((keys, limit, expiry, 1), [i]) for i in hits]
        answers: list[Hit | None] = [None] * len(batch)
        again: list[tuple[Call, list[int]]] = []
        refused: set[tuple[str, str]] = set()  # keys with a hit refused in this batch
        for (call, hits), reply in zip(calls, await self._send([c for c, _ in calls]), strict=True):
            if reply[0] or call[3] == 1:
                for i in hits:
                    answers[i] = reply
                if not reply[0]:
                    refused.add(call[0])
            else:
                again += [((*call[:3], 1), [i]) for i in hits]
        if again:
            replies = await self._send([c for c, _ in again])
            for (call, [i]), reply in zip(again, replies, strict=True):
                answers[i] = reply
                if not reply[0]:
                    refused.add(call[0])
        if len(self.strained) >= 10_000:
            self.strained.clear()
        for keys in by_key:
            if keys in refused:
                self.strained.add(keys)
            else:
                self.strained.discard(keys)
        return [answer for answer in answers if answer is not None]

    async def _send(self, calls: list[Call]) -> list[Hit]:
        """Each call of the script, in one round trip."""
        rows = [(*keys, limit, expiry, amount) for keys, limit, expiry, amount in calls]
        return [_hit(reply) for reply in await self._eval(rows)]

    async def _eval(self, calls: Sequence[tuple[str | int, ...]]) -> list[Any]:
        # EVALSHA, not the script object's call: in a pipeline that asks Redis whether it
        # has the script first, a second round trip for every batch.
        sha, client = self.script.sha, self.client
        if len(calls) == 1:  # a quiet moment: a plain call costs less than a pipeline
            try:
                return [await client.evalsha(sha, 2, *calls[0])]
            except NoScriptError:
                await client.script_load(self.script.script)
                return [await client.evalsha(sha, 2, *calls[0])]
        pipe = client.pipeline(transaction=False)
        for call in calls:
            pipe.evalsha(sha, 2, *call)
        try:
            results: list[Any] = await pipe.execute()
        except NoScriptError:
            # A restarted or flushed Redis forgot the script: nothing ran, so send it all again.
            await client.script_load(self.script.script)
            results = await self._eval(calls)
        return results


def _hit(reply: Sequence[Any]) -> Hit:
    allowed, previous, previous_ttl, current, current_ttl = reply
    return bool(allowed), (
        int(previous),
        max(0, int(previous_ttl)) / 1000,
        int(current),
        max(0, int(current_ttl)) / 1000,
    )


def _answer(futures: Sequence[Answer | asyncio.Future[Any]], results: Sequence[Any]) -> None:
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

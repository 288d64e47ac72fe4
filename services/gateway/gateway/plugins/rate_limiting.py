"""The rate_limiting plugin: per client and per route, shared across replicas through Redis."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import (
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)
from limits.errors import StorageError
from pydantic import BaseModel, Field, field_validator
from redis import RedisError
from redis.asyncio import ConnectionPool, Redis
from redis.exceptions import NoScriptError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.context import PRINCIPAL, client_ip, state
from gateway.metrics import RATE_LIMIT_REJECTIONS, RATE_LIMIT_STORAGE_ERRORS
from gateway.paths import PathPattern
from gateway.pipeline import GatewayPlugin, plugin_config
from keelson.config import PluginSettings
from keelson.http import problem_response
from keelson.plugins import Health, PluginMetadata, Priority

__all__ = ["RateLimitConfig", "RateLimitingPlugin", "RateRule"]

_log = logging.getLogger("gateway.rate_limiting")


class Strategy(StrEnum):
    MOVING_WINDOW = "moving-window"
    SLIDING_WINDOW = "sliding-window"


class StorageKind(StrEnum):
    AUTO = "auto"  # Redis when KEELSON_REDIS_URL is set, else this process's memory
    REDIS = "redis"
    MEMORY = "memory"


class RateRule(BaseModel):
    """`path` is exact, or a prefix when it ends with `*`; no `methods` means all."""

    path: str
    limit: str
    methods: list[str] = []

    @field_validator("limit")
    @classmethod
    def _parses(cls, value: str) -> str:
        parse(value)
        return value

    @field_validator("methods")
    @classmethod
    def _upper(cls, value: list[str]) -> list[str]:
        return [m.upper() for m in value]


class RateLimitConfig(BaseModel):
    default: str | None = "600/minute"
    rules: list[RateRule] = [
        RateRule(path="/api/v1/auth/login", methods=["POST"], limit="10/minute"),
        RateRule(path="/api/v1/auth/register", methods=["POST"], limit="10/minute"),
        RateRule(path="/api/v1/auth/password-reset*", methods=["POST"], limit="5/minute"),
        RateRule(path="/api/v1/handshake", methods=["POST"], limit="30/minute"),
    ]
    exempt: list[str] = ["/health", "/metrics"]
    strategy: Strategy = Strategy.SLIDING_WINDOW
    storage: StorageKind = StorageKind.AUTO
    fail_open: bool = True
    storage_timeout_seconds: float = Field(0.25, gt=0)
    # The RateLimit-* headers are advisory; counting is always exact in the store. With
    # Redis, a busy client's remaining budget is re-read at most this often (and on every
    # request once it is within 10% of the limit), and counted down locally in between:
    # one round trip per request instead of two. 0: re-read every time.
    stats_refresh_seconds: float = Field(1.0, ge=0)
    key_prefix: str = "keelson-gateway"

    @field_validator("default")
    @classmethod
    def _parses(cls, value: str | None) -> str | None:
        if value is not None:
            parse(value)
        return value


@dataclass(eq=False, slots=True)
class _Tally:
    """One client under one rule: its keys in the store and the window last read."""

    key: str  # limits' key for (rule, client)
    window_keys: tuple[str, str] | None  # with Redis: the (previous, current) window keys
    remaining: int = 0
    reset_at: float = 0.0
    read_at: float = -math.inf


@dataclass(eq=False)
class _Rule:
    name: str
    item: RateLimitItem
    pattern: PathPattern
    tallies: dict[str, _Tally] = field(default_factory=dict)  # by client
    limit_header: tuple[bytes, bytes] = field(init=False)

    def __post_init__(self) -> None:
        self.limit_header = (b"ratelimit-limit", b"%d" % self.item.amount)

    def tally(self, client: str, window_keys: Callable[[str], tuple[str, str]] | None) -> _Tally:
        """The client's tally, made on its first request (keys built once, not per hit)."""
        found = self.tallies.get(client)
        if found is None:
            if len(self.tallies) >= 100_000:  # a bound on memory; a tally is only a cache
                self.tallies.clear()
            key = self.item.key_for(self.name, client)
            found = _Tally(key, window_keys(key) if window_keys else None)
            self.tallies[client] = found
        return found


class _Rules:
    """The rules compiled once per config; `for_request` is the hot path."""

    def __init__(self, config: RateLimitConfig) -> None:
        self.rules = [
            _Rule(r.path, parse(r.limit), PathPattern.parse(r.path, r.methods))
            for r in config.rules
        ]
        self.default = (
            _Rule("default", parse(config.default), PathPattern.parse("*"))
            if config.default
            else None
        )
        self.exempt = tuple(config.exempt)

    def for_request(self, method: str, path: str) -> _Rule | None:
        if path.startswith(self.exempt):
            return None
        for rule in self.rules:
            if rule.pattern.matches(method, path):
                return rule
        return self.default


class _RedisOnlyStorage(RedisStorage):
    """limits' async Redis storage, importing only redis-py.

    The stock class imports every client it could use (redis-py, valkey, coredis) the
    first time it looks for one: about a megabyte of resident memory for nothing.
    """

    # No minimum here: the workspace pins redis>=5.2, which limits needs.
    DEPENDENCIES = {"redis": None}


class _MemoryWindows(MemoryStorage):
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
            *_window_stats(limit, expiry, previous, previous_ttl, current, current_ttl, now),
        )

    def _count(self, key: str, now: float) -> int:
        if self.expirations.get(key, 0) <= now:
            self.storage.pop(key, None)
            self.expirations.pop(key, None)
            self.locks.pop(key, None)
        return self.storage.get(key, 0)

    def _sweep(self, now: float) -> None:
        self._sweep_at = now + self._SWEEP_SECONDS
        for key in [k for k, at in self.expirations.items() if at <= now]:
            self.storage.pop(key, None)
            self.expirations.pop(key, None)
            self.locks.pop(key, None)


def _window_stats(
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


# One call of limits' sliding-window script: window keys, limit, expiry, amount.
_Call = tuple[tuple[str, str], int, int, int]
# A window as limits' storage reads it: previous count, its TTL, current count, its TTL.
_Window = tuple[int, float, int, float]


class _PipelinedHits:
    """Sliding-window hits in Redis, sent in pipelines: one round trip per batch.

    Hits that arrive while a round trip is under way wait for the next one and share it.
    The hits of one batch on one key are one call of limits' atomic Lua script with
    amount=n, which takes all n or none: when all fit, that is what n calls in a row
    would have answered. When they do not, the key's hits go again as one call each, in
    arrival order, so the counts and answers are exactly those of one call per hit; a
    key refused lately goes as one call per hit straight away.

    Window reads (for the RateLimit-* headers) are queued the same way, after the hits:
    the reads of one key in one batch are one call of limits' read script, each read
    having been asked for after its own hit was answered.
    """

    def __init__(self, storage: RedisStorage) -> None:
        self.storage = storage
        bridge: Any = storage.bridge
        self.client: Redis = bridge.get_connection()
        self.script = bridge.lua_acquire_sliding_window
        self.read_script = bridge.lua_sliding_window
        self.queue: list[tuple[tuple[str, str], int, int, asyncio.Future[bool]]] = []
        self.reads: dict[tuple[str, str], tuple[int, list[asyncio.Future[_Window]]]] = {}
        self.sender: asyncio.Task[None] | None = None
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
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.queue.append((keys, limit, expiry, future))
        if self.sender is None:
            self.sender = asyncio.create_task(self._send_all())
        return await future

    async def window(self, keys: tuple[str, str], expiry: int) -> _Window:
        """(previous count, its TTL, current count, its TTL), as limits' storage reads it."""
        future: asyncio.Future[_Window] = asyncio.get_running_loop().create_future()
        self.reads.setdefault(keys, (expiry, []))[1].append(future)
        if self.sender is None:
            self.sender = asyncio.create_task(self._send_all())
        return await future

    async def _send_all(self) -> None:
        try:
            while self.queue or self.reads:
                if self.queue:
                    batch, self.queue = self.queue, []
                    hits = [future for *_, future in batch]
                    try:
                        _answer(hits, await self._count(batch))
                    except (RedisError, OSError) as exc:
                        _fail(hits, exc)
                if self.reads:
                    reads, self.reads = self.reads, {}
                    waiting = [readers for _, readers in reads.values()]
                    try:
                        windows = await self._read(reads)
                    except (RedisError, OSError) as exc:
                        for readers in waiting:
                            _fail(readers, exc)
                    else:
                        for readers, window in zip(waiting, windows, strict=True):
                            _answer(readers, [window] * len(readers))
        finally:
            self.sender = None
            for *_, future in self.queue:
                future.cancel()
            for _, readers in self.reads.values():
                for reader in readers:
                    reader.cancel()
            self.queue.clear()
            self.reads.clear()

    async def _count(
        self, batch: list[tuple[tuple[str, str], int, int, asyncio.Future[bool]]]
    ) -> list[bool]:
        by_key: dict[tuple[str, str], list[int]] = {}
        for i, (keys, *_) in enumerate(batch):
            by_key.setdefault(keys, []).append(i)
        calls: list[tuple[_Call, list[int]]] = []
        for keys, hits in by_key.items():
            _, limit, expiry, _ = batch[hits[0]]
            if len(hits) == 1 or keys not in self.strained:
                calls.append(((keys, limit, expiry, len(hits)), hits))
            else:
                calls += [((keys, limit, expiry, 1), [i]) for i in hits]
        allowed = [False] * len(batch)
        again: list[tuple[_Call, list[int]]] = []
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

    async def _send(self, calls: list[_Call]) -> list[Any]:
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


def _answer(futures: list[asyncio.Future[Any]], results: list[Any]) -> None:
    for future, result in zip(futures, results, strict=True):
        if not future.done():  # a caller that gave up (timeout, disconnect) is skipped
            future.set_result(result)


def _fail(futures: list[asyncio.Future[Any]], exc: Exception) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(StorageError(exc))


class RateLimitingPlugin(GatewayPlugin):
    metadata = PluginMetadata(
        name="rate_limiting",
        priority=Priority.MIDDLEWARE,
        required=False,  # without it the gateway still serves, degraded
        description="Per-client, per-route limits (limits library; Redis shared by replicas)",
    )

    async def initialize(self) -> None:
        self.config = plugin_config(RateLimitConfig, self.settings)
        self.rules = _Rules(self.config)
        self._pool: ConnectionPool | None = None
        self.storage = self._storage()
        self.limiter: RateLimiter = (
            MovingWindowRateLimiter(self.storage)
            if self.config.strategy is Strategy.MOVING_WINDOW
            else SlidingWindowCounterRateLimiter(self.storage)
        )
        sliding = self.config.strategy is Strategy.SLIDING_WINDOW
        self._memory = (
            self.storage if sliding and isinstance(self.storage, _MemoryWindows) else None
        )
        self._hits = (
            _PipelinedHits(self.storage)
            if sliding and isinstance(self.storage, RedisStorage)
            else None
        )
        self._window_keys = self._hits.window_keys if self._hits is not None else None
        self._last_complaint = 0.0
        # In memory the stats cost no round trip: always exact.
        self._refresh = self.config.stats_refresh_seconds if self._pool is not None else 0.0

    def _storage(self) -> Storage:
        url = self.container.settings.redis_url
        kind = self.config.storage
        if kind is StorageKind.REDIS and url is None:
            raise RuntimeError("rate_limiting storage is redis but KEELSON_REDIS_URL is not set")
        if kind is StorageKind.MEMORY or url is None:
            return _MemoryWindows()
        timeout = self.config.storage_timeout_seconds
        self._pool = ConnectionPool.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        return _RedisOnlyStorage(
            "async+" + url,
            implementation="redispy",
            wrap_exceptions=True,
            key_prefix=self.config.key_prefix,
            connection_pool=self._pool,  # type: ignore[arg-type]  # typed narrower than it is
        )

    @property
    def storage_name(self) -> str:
        return "redis" if self._pool is not None else "memory"

    async def stop(self) -> None:
        if self._pool is not None:
            await self._pool.disconnect()

    async def health(self) -> Health:
        try:
            ok = await self.storage.check()
        except Exception:
            ok = False
        mode = "open" if self.config.fail_open else "closed"
        detail = f"{self.storage_name} storage {'reachable' if ok else 'unreachable'}"
        # An unreachable store only degrades a fail-open gateway; a fail-closed one refuses.
        return Health(ok=ok, detail=f"{detail}, fails {mode}", critical=not self.config.fail_open)

    def prepare_reload(self, section: PluginSettings) -> Callable[[], None]:
        config = plugin_config(RateLimitConfig, section)
        rules = _Rules(config)

        def apply() -> None:
            self.settings = section
            self.config = self.config.model_copy(
                update={
                    "default": config.default,
                    "rules": config.rules,
                    "exempt": config.exempt,
                    "fail_open": config.fail_open,
                }
            )
            self.rules = rules  # with fresh tallies: the limits may have changed

        return apply

    def wrap(self, app: ASGIApp) -> ASGIApp:
        return _RateLimitLayer(app, self)

    async def count(self, rule: _Rule, client: str) -> tuple[bool, int, float]:
        """Count one hit: (allowed, remaining, reset epoch seconds)."""
        item = rule.item
        tally = rule.tally(client, self._window_keys)
        if self._memory is not None:
            return self._memory.hit_now(tally.key, item.amount, item.get_expiry())
        if tally.window_keys is not None:
            assert self._hits is not None
            allowed = await self._hits.hit(tally.window_keys, item.amount, item.get_expiry())
        else:
            allowed = await self.limiter.hit(item, rule.name, client)
        now = time.monotonic()
        if (
            not allowed
            or now - tally.read_at >= self._refresh
            or tally.remaining <= max(1, item.amount // 10)
        ):
            if tally.window_keys is not None:
                assert self._hits is not None
                expiry = item.get_expiry()
                window = await self._hits.window(tally.window_keys, expiry)
                stats = _window_stats(item.amount, expiry, *window, time.time())
            else:
                limits_stats = await self.limiter.get_window_stats(item, rule.name, client)
                stats = limits_stats.remaining, limits_stats.reset_time
            (tally.remaining, tally.reset_at), tally.read_at = stats, now
        else:
            tally.remaining = max(0, tally.remaining - 1)
        return allowed, tally.remaining, tally.reset_at

    def storage_failed(self, exc: Exception) -> None:
        outcome = "allowed" if self.config.fail_open else "refused"
        RATE_LIMIT_STORAGE_ERRORS.labels(outcome).inc()
        now = time.monotonic()
        if now - self._last_complaint > 10.0:
            self._last_complaint = now
            _log.warning(
                "rate-limit storage unavailable (%s); requests %s",
                type(exc).__name__,
                outcome,
            )


class _RateLimitLayer:
    def __init__(self, app: ASGIApp, plugin: RateLimitingPlugin) -> None:
        self.app = app
        self.plugin = plugin
        self.hops: int = getattr(plugin.container.settings, "trusted_proxy_hops", 0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        plugin = self.plugin
        rule = plugin.rules.for_request(scope["method"], scope["path"])
        if rule is None:
            await self.app(scope, receive, send)
            return
        principal: Any = state(scope).get(PRINCIPAL)
        client = (
            f"user:{principal.user_id}"
            if principal is not None
            else ("ip:" + client_ip(scope, self.hops))
        )
        try:
            allowed, remaining, reset_at = await plugin.count(rule, client)
        except StorageError as exc:
            plugin.storage_failed(exc)
            if plugin.config.fail_open:
                await self.app(scope, receive, send)
            else:
                await problem_response(
                    503,
                    "Service Unavailable",
                    "Rate limiting is unavailable; try again shortly.",
                    headers={"Retry-After": "1"},
                )(scope, receive, send)
            return
        reset = max(1, math.ceil(reset_at - time.time()))
        headers = (
            rule.limit_header,
            (b"ratelimit-remaining", b"%d" % remaining),
            (b"ratelimit-reset", b"%d" % reset),
        )
        if not allowed:
            RATE_LIMIT_REJECTIONS.labels(rule.name).inc()
            response = problem_response(
                429,
                "Too Many Requests",
                f"Limit of {rule.item.amount} per {_period(rule.item)} exceeded; retry later.",
                headers={"Retry-After": str(reset)},
            )
            response.raw_headers.extend(headers)
            await response(scope, receive, send)
            return

        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *headers]
            await send(message)

        await self.app(scope, receive, send_with_limits)


def _period(item: RateLimitItem) -> str:
    multiple = item.multiples
    unit = item.GRANULARITY.name
    return unit if multiple == 1 else f"{multiple} {unit}s"

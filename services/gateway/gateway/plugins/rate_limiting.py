"""The rate_limiting plugin: per client and per route, shared across replicas through Redis."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class _Rule:
    name: str
    item: RateLimitItem
    pattern: PathPattern


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


class _PipelinedHits:
    """Sliding-window hits in Redis, sent in pipelines: one round trip per batch.

    Hits that arrive while a round trip is under way wait for the next one and share it.
    Each hit is still its own call of limits' atomic Lua script, in arrival order, so the
    counts are exactly those of one call per hit; only the network round trips and the
    client's per-call work are shared.
    """

    def __init__(self, storage: RedisStorage) -> None:
        self.storage = storage
        bridge: Any = storage.bridge
        self.client: Redis = bridge.get_connection()
        self.script = bridge.lua_acquire_sliding_window
        self.queue: list[tuple[str, str, int, int, asyncio.Future[bool]]] = []
        self.sender: asyncio.Task[None] | None = None

    async def hit(self, item: RateLimitItem, *identifiers: str) -> bool:
        key = item.key_for(*identifiers)
        storage: Any = self.storage
        current = storage.bridge.prefixed_key(storage._current_window_key(key))
        previous = storage.bridge.prefixed_key(storage._previous_window_key(key))
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.queue.append((previous, current, item.amount, item.get_expiry(), future))
        if self.sender is None:
            self.sender = asyncio.create_task(self._send_all())
        return await future

    async def _send_all(self) -> None:
        try:
            while self.queue:
                batch, self.queue = self.queue, []
                try:
                    results = await self._send(batch)
                except (RedisError, OSError) as exc:
                    for *_, future in batch:
                        if not future.done():
                            future.set_exception(StorageError(exc))
                    continue
                for (*_, future), allowed in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(bool(allowed))
        finally:
            self.sender = None
            for *_, future in self.queue:
                future.cancel()
            self.queue.clear()

    async def _send(
        self, batch: list[tuple[str, str, int, int, asyncio.Future[bool]]]
    ) -> list[Any]:
        if len(batch) == 1:  # a quiet moment: a plain call costs less than a pipeline
            previous, current, limit, expiry, _ = batch[0]
            sha = self.script.sha
            try:
                return [await self.client.evalsha(sha, 2, previous, current, limit, expiry, 1)]
            except NoScriptError:
                await self.client.script_load(self.script.script)
                return [await self.client.evalsha(sha, 2, previous, current, limit, expiry, 1)]
        pipe = self.client.pipeline(transaction=False)
        for previous, current, limit, expiry, _ in batch:
            pipe.evalsha(self.script.sha, 2, previous, current, limit, expiry, 1)
        try:
            results: list[Any] = await pipe.execute()
        except NoScriptError:
            # A restarted or flushed Redis forgot the script: nothing ran, so send it all again.
            await self.client.script_load(self.script.script)
            results = await self._send(batch)
        return results


@dataclass
class _Window:
    remaining: int
    reset_at: float
    read_at: float


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
        self._hits = (
            _PipelinedHits(self.storage)
            if isinstance(self.storage, RedisStorage)
            and self.config.strategy is Strategy.SLIDING_WINDOW
            else None
        )
        self._last_complaint = 0.0
        self._windows: dict[tuple[str, str], _Window] = {}
        # In memory the stats cost no round trip: always exact.
        self._refresh = self.config.stats_refresh_seconds if self._pool is not None else 0.0

    def _storage(self) -> Storage:
        url = self.container.settings.redis_url
        kind = self.config.storage
        if kind is StorageKind.REDIS and url is None:
            raise RuntimeError("rate_limiting storage is redis but KEELSON_REDIS_URL is not set")
        if kind is StorageKind.MEMORY or url is None:
            return MemoryStorage()
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
            self.rules = rules
            self._windows.clear()

        return apply

    def wrap(self, app: ASGIApp) -> ASGIApp:
        return _RateLimitLayer(app, self)

    async def count(self, rule: _Rule, client: str) -> tuple[bool, int, float]:
        """Count one hit: (allowed, remaining, reset epoch seconds)."""
        hits = self._hits
        if hits is not None:
            allowed = await hits.hit(rule.item, rule.name, client)
        else:
            allowed = await self.limiter.hit(rule.item, rule.name, client)
        key = (rule.name, client)
        window = self._windows.get(key)
        now = time.monotonic()
        stale = (
            window is None
            or not allowed
            or now - window.read_at >= self._refresh
            or window.remaining <= max(1, rule.item.amount // 10)
        )
        if stale:
            stats = await self.limiter.get_window_stats(rule.item, rule.name, client)
            if window is None and len(self._windows) >= 100_000:
                self._windows.clear()
            window = _Window(stats.remaining, stats.reset_time, now)
            self._windows[key] = window
        else:
            assert window is not None
            window.remaining = max(0, window.remaining - 1)
        return allowed, window.remaining, window.reset_at

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
        headers = [
            (b"ratelimit-limit", str(rule.item.amount).encode()),
            (b"ratelimit-remaining", str(remaining).encode()),
            (b"ratelimit-reset", str(reset).encode()),
        ]
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

"""The rate_limiting plugin: per client and per route, shared across replicas through Redis."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from pydantic import BaseModel, Field, field_validator
from redis.asyncio import ConnectionPool, Redis
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.context import RequestContext, context
from gateway.metrics import (
    RATE_LIMIT_OVERSHOOT,
    RATE_LIMIT_REJECTIONS,
    RATE_LIMIT_STORAGE_ERRORS,
)
from gateway.paths import PathPattern, PerPath
from gateway.pipeline import GatewayPlugin
from gateway.plugins._rate_windows import Hit, MemoryWindows, RedisHits, window_stats
from keelson.config import PluginSettings
from keelson.errors import ServiceUnavailable, TooManyRequests
from keelson.plugins import Health, PluginMetadata, Priority

__all__ = ["RateLimitConfig", "RateLimitHeaders", "RateLimitingPlugin", "RateRule"]

_log = logging.getLogger("gateway.rate_limiting")


class Strategy(StrEnum):
    MOVING_WINDOW = "moving-window"
    SLIDING_WINDOW = "sliding-window"


class StorageKind(StrEnum):
    AUTO = "auto"  # Redis when KEELSON_REDIS_URL is set, else this process's memory
    REDIS = "redis"
    MEMORY = "memory"


class RateRule(BaseModel):
    """`path` is exact, or a prefix when it ends with `*`; no `methods` means all.

    `per`: `caller` counts a signed-in caller by user and anyone else by address;
    `address` always counts by the client's address, whatever token is sent. Login-like
    routes use `address`: keyed by the account a token names, every account holder would
    get a fresh budget of password guesses against anyone.
    """

    path: str
    limit: str
    methods: list[str] = []
    per: Literal["caller", "address"] = "caller"

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
        RateRule(path="/api/v1/auth/login", methods=["POST"], limit="10/minute", per="address"),
        # The OAuth2 token endpoint logs in too (password grant).
        RateRule(path="/api/v1/auth/token", methods=["POST"], limit="10/minute", per="address"),
        RateRule(path="/api/v1/auth/register", methods=["POST"], limit="10/minute", per="address"),
        RateRule(
            path="/api/v1/auth/password-reset*", methods=["POST"], limit="5/minute", per="address"
        ),
        RateRule(
            path="/api/v1/auth/verify-email*", methods=["POST"], limit="10/minute", per="address"
        ),
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
    # With Redis, a hit is admitted without waiting for the store while the client's budget,
    # as last read (within stats_refresh_seconds) and counted down since, has more than
    # this many hits (and 10% of the limit) left; the hit is counted in the store within
    # linger_seconds, sharing one call with the others. A hit the store then refuses
    # (another replica spent the budget meanwhile) is counted in
    # gateway_rate_limit_overshoot_total, and the client's next hits wait for the store.
    # Below this margin, and for limits smaller than it, every hit waits: counting and
    # refusing are exact. A very large value makes every hit wait.
    admit_ahead_above: int = Field(50, ge=0)
    linger_seconds: float = Field(0.005, gt=0, le=1)
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
    answer: _AdmittedAhead | None = None  # where the store answers hits admitted ahead


class _AdmittedAhead:
    """The store's answer to a tally's hits admitted ahead of it (`RedisHits.Answer`)."""

    __slots__ = ("plugin", "rule", "tally")

    def __init__(self, plugin: RateLimitingPlugin, rule: str, tally: _Tally) -> None:
        self.plugin = plugin
        self.rule = rule
        self.tally = tally

    def done(self) -> bool:
        return False  # answered once per hit

    def set_result(self, hit: Hit) -> None:
        if not hit[0]:
            # Another replica spent the budget meanwhile: this hit went through uncounted.
            # The client's next hits wait for the store, which re-reads its window.
            RATE_LIMIT_OVERSHOOT.labels(self.rule).inc()
            self.tally.remaining, self.tally.read_at = 0, -math.inf

    def set_exception(self, exception: BaseException) -> None:
        self.plugin.storage_failed(exception, admitted=True)


Header = tuple[bytes, bytes]


class RateLimitHeaders:
    """One limit's `RateLimit-Limit`, `-Remaining` and `-Reset` response headers.

    The limit's header is formatted once; the reset's once a second (it is the same for
    every client's request within a second), not once a request.
    """

    __slots__ = ("limit", "reset")

    def __init__(self, limit: int) -> None:
        self.limit: Header = (b"ratelimit-limit", b"%d" % limit)
        self.reset: tuple[int, Header] = (0, (b"ratelimit-reset", b"0"))  # the last one sent

    def for_hit(self, remaining: int, reset_at: float) -> tuple[int, tuple[Header, ...]]:
        """(seconds until `reset_at`, at least 1; the three headers) for a counted hit."""
        seconds = math.ceil(reset_at - time.time())
        if seconds < 1:
            seconds = 1
        reset = self.reset
        if reset[0] != seconds:
            reset = self.reset = (seconds, (b"ratelimit-reset", b"%d" % seconds))
        return seconds, (self.limit, (b"ratelimit-remaining", b"%d" % remaining), reset[1])


@dataclass(eq=False)
class _Rule:
    name: str
    item: RateLimitItem
    pattern: PathPattern
    margin: int = 0  # admitted ahead of the store only while more than this many are left
    by_address: bool = False  # counted by the client's address even for a signed-in caller
    tallies: dict[str, _Tally] = field(default_factory=dict)  # by client
    headers: RateLimitHeaders = field(init=False)
    amount: int = field(init=False)  # `item.amount`, read on every hit
    expiry: int = field(init=False)

    def __post_init__(self) -> None:
        self.amount = self.item.amount
        self.headers = RateLimitHeaders(self.amount)
        self.expiry = self.item.get_expiry()
        self.margin = max(self.margin, self.amount // 10)

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
        margin = config.admit_ahead_above
        self.rules = [
            _Rule(
                r.path,
                parse(r.limit),
                PathPattern.parse(r.path, r.methods),
                margin,
                by_address=r.per == "address",
            )
            for r in config.rules
        ]
        self.default = (
            _Rule("default", parse(config.default), PathPattern.parse("*"), margin)
            if config.default
            else None
        )
        self.exempt = tuple(config.exempt)
        self.for_request: PerPath[_Rule | None] = PerPath(self._first)

    def _first(self, method: str, path: str) -> _Rule | None:
        if path.startswith(self.exempt):
            return None
        for rule in self.rules:
            if rule.pattern.matches(method, path):
                return rule
        return self.default


class RateLimitingPlugin(GatewayPlugin):
    metadata = PluginMetadata(
        name="rate_limiting",
        priority=Priority.MIDDLEWARE,
        required=False,  # without it the gateway still serves, degraded
        description="Per-client, per-route limits (Redis shared by replicas, or in-process)",
    )

    async def initialize(self) -> None:
        self.config = self.options(RateLimitConfig)
        self.rules = _Rules(self.config)
        self._pool: ConnectionPool | None = None
        self._redis: Redis | None = None
        url = self.container.settings.redis_url
        kind = self.config.storage
        if kind is StorageKind.REDIS and url is None:
            raise RuntimeError("rate_limiting storage is redis but KEELSON_REDIS_URL is not set")
        if kind is not StorageKind.MEMORY and url is not None:
            timeout = self.config.storage_timeout_seconds
            self._pool = ConnectionPool.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout
            )
            self._redis = Redis(connection_pool=self._pool)
        # The sliding window (the default) is counted by our own code (`_rate_windows`);
        # the moving window by limits' limiter on limits' storage.
        self._memory: MemoryWindows | None = None
        self._hits: RedisHits | None = None
        self.storage: Storage | None = None
        self.limiter: MovingWindowRateLimiter | None = None
        if self.config.strategy is Strategy.MOVING_WINDOW:
            self.storage = self._limits_storage(url)
            self.limiter = MovingWindowRateLimiter(self.storage)
        elif self._redis is not None:
            self._hits = RedisHits(
                self._redis, key_prefix=self.config.key_prefix, linger=self.config.linger_seconds
            )
        else:
            self._memory = MemoryWindows()
        self._store_failed = False  # since the last hit it answered: every hit waits for it
        self._last_complaint = 0.0
        # In memory the stats cost no round trip: always exact.
        self._refresh = self.config.stats_refresh_seconds if self._pool is not None else 0.0

    def _limits_storage(self, url: str | None) -> Storage:
        if self._pool is None or url is None:
            return MemoryStorage()
        return RedisStorage(
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
        if self._hits is not None:
            await self._hits.close()  # the hits admitted ahead of the store, counted
        if self._redis is not None:
            await self._redis.aclose()
        if self._pool is not None:
            await self._pool.disconnect()

    async def health(self) -> Health:
        try:
            if self._redis is not None:
                ok = bool(await self._redis.ping())
            else:
                ok = self.storage is None or await self.storage.check()
        except Exception:
            ok = False
        mode = "open" if self.config.fail_open else "closed"
        detail = f"{self.storage_name} storage {'reachable' if ok else 'unreachable'}"
        # An unreachable store only degrades a fail-open gateway; a fail-closed one refuses.
        return Health(ok=ok, detail=f"{detail}, fails {mode}", critical=not self.config.fail_open)

    def prepare_reload(self, section: PluginSettings) -> Callable[[], None]:
        config = self.options(RateLimitConfig, section)
        rules = _Rules(config)

        def apply() -> None:
            self.settings = section
            self.config = self.config.model_copy(
                update={
                    "default": config.default,
                    "rules": config.rules,
                    "exempt": config.exempt,
                    "fail_open": config.fail_open,
                    "admit_ahead_above": config.admit_ahead_above,
                }
            )
            self.rules = rules  # with fresh tallies: the limits may have changed

        return apply

    def wrap(self, app: ASGIApp) -> ASGIApp:
        return _RateLimitLayer(app, self)

    def count_now(self, rule: _Rule, client: str) -> tuple[bool, int, float] | None:
        """Count one hit without waiting, as `count` answers; None when it must wait.

        In memory every hit is answered at once. With Redis, a hit is admitted ahead of the
        store's answer while the client's tally, read lately, is above the rule's margin; the
        store counts it within `linger_seconds` (see `RateLimitConfig.admit_ahead_above`).
        """
        if self._memory is not None:
            tally = rule.tallies.get(client) or rule.tally(client, None)
            return self._memory.hit_now(tally.key, rule.amount, rule.expiry)
        hits = self._hits
        if hits is None or self._store_failed:
            return None
        tally = rule.tallies.get(client) or rule.tally(client, hits.window_keys)
        keys = tally.window_keys
        if (
            keys is None
            or tally.remaining <= rule.margin
            or time.monotonic() - tally.read_at >= self._refresh
        ):
            return None
        tally.remaining -= 1
        if tally.answer is None:
            tally.answer = _AdmittedAhead(self, rule.name, tally)
        hits.hit_later(keys, rule.amount, rule.expiry, tally.answer)
        return True, tally.remaining, tally.reset_at

    async def count(self, rule: _Rule, client: str) -> tuple[bool, int, float]:
        """Count one hit, waiting for the store: (allowed, remaining, reset epoch seconds).
        For the hits `count_now` does not answer (in memory it answers every one)."""
        item = rule.item
        hits = self._hits
        now = time.monotonic()
        if hits is not None:
            tally = rule.tally(client, hits.window_keys)
            assert tally.window_keys is not None
            allowed, window = await hits.hit(tally.window_keys, item.amount, rule.expiry)
            self._store_failed = False
            stats = window_stats(item.amount, rule.expiry, *window, time.time())
            (tally.remaining, tally.reset_at), tally.read_at = stats, now
            return allowed, tally.remaining, tally.reset_at
        assert self.limiter is not None
        tally = rule.tally(client, None)
        allowed = await self.limiter.hit(item, rule.name, client)
        self._store_failed = False
        if (
            not allowed
            or now - tally.read_at >= self._refresh
            or tally.remaining <= max(1, item.amount // 10)
        ):
            limits_stats = await self.limiter.get_window_stats(item, rule.name, client)
            tally.remaining, tally.reset_at = limits_stats.remaining, limits_stats.reset_time
            tally.read_at = now
        else:
            tally.remaining = max(0, tally.remaining - 1)
        return allowed, tally.remaining, tally.reset_at

    def storage_failed(self, exc: BaseException, *, admitted: bool = False) -> None:
        """The store failed a hit; `admitted`: one admitted ahead of its answer."""
        self._store_failed = True
        outcome = "allowed" if admitted or self.config.fail_open else "refused"
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

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain function while the hit is answered at once (see GatewayPlugin.wrap).
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        plugin = self.plugin
        rule = plugin.rules.for_request(scope["method"], scope["path"])
        if rule is None:
            return self.app(scope, receive, send)
        ctx = context(scope)
        principal = ctx.principal
        client = (
            "user:" + principal.user_id
            if principal is not None and not rule.by_address
            else "ip:" + ctx.client_ip
        )
        answer = plugin.count_now(rule, client)
        if answer is None:
            return self._counted(rule, client, ctx, scope, receive, send)
        allowed, remaining, reset_at = answer
        if not allowed:
            return self._refused(rule, remaining, reset_at, send)
        ctx.response.add_headers(rule.headers.for_hit(remaining, reset_at)[1])
        return self.app(scope, receive, send)

    async def _counted(
        self,
        rule: _Rule,
        client: str,
        ctx: RequestContext,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        plugin = self.plugin
        try:
            allowed, remaining, reset_at = await plugin.count(rule, client)
        except StorageError as exc:
            plugin.storage_failed(exc)
            if plugin.config.fail_open:
                await self.app(scope, receive, send)
            else:
                await ServiceUnavailable(
                    "Rate limiting is unavailable; try again shortly.", retry_after=1
                ).send_to(send)
            return
        if not allowed:
            await self._refused(rule, remaining, reset_at, send)
            return
        ctx.response.add_headers(rule.headers.for_hit(remaining, reset_at)[1])
        await self.app(scope, receive, send)

    def _refused(self, rule: _Rule, remaining: int, reset_at: float, send: Send) -> Awaitable[None]:
        RATE_LIMIT_REJECTIONS.labels(rule.name).inc()
        reset, headers = rule.headers.for_hit(remaining, reset_at)
        return TooManyRequests(
            f"Limit of {rule.amount} per {_period(rule.item)} exceeded; retry later.",
            retry_after=reset,
            headers={name.decode(): value.decode() for name, value in headers},
        ).send_to(send)


def _period(item: RateLimitItem) -> str:
    multiple = item.multiples
    unit = item.GRANULARITY.name
    return unit if multiple == 1 else f"{multiple} {unit}s"

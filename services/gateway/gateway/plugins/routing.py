"""The routing plugin: the reverse proxy to auth, logs, notifications and payments."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
from starlette.types import ASGIApp

from gateway.circuit import CircuitState
from gateway.openapi import CATALOG, OpenApiCatalog
from gateway.pipeline import GatewayPlugin
from gateway.proxy import ProxyApp, new_pools, new_session
from gateway.transport import UpstreamTransport
from gateway.upstreams import RouteTable, RoutingConfig, Upstream
from keelson.plugins import Health, Key, PluginMetadata, Priority

__all__ = ["CATALOG", "ROUTE_TABLE", "UPSTREAM_TRANSPORTS", "RoutingPlugin"]

ROUTE_TABLE: Key[RouteTable] = Key("gateway.route_table")
CIRCUIT_WATCH_SECONDS = 0.5
# Transports by upstream name that replace its connection pool (an in-process app, in tests).
UPSTREAM_TRANSPORTS: Key[Mapping[str, UpstreamTransport]] = Key("gateway.upstream_transports")


class RoutingPlugin(GatewayPlugin):
    metadata = PluginMetadata(
        name="routing",
        priority=Priority.BUSINESS,
        description="Reverse proxy by path prefix: pooled, retried, circuit-broken",
    )

    async def initialize(self) -> None:
        self.config = self.options(RoutingConfig)
        upstreams = {name: Upstream(name, cfg) for name, cfg in self.config.upstreams.items()}
        self.table = RouteTable(upstreams)
        self.session = new_session(self.config)
        given = self.container.resolve_optional(UPSTREAM_TRANSPORTS)
        self.pools = new_pools(upstreams, self.config, given)
        self.catalog = OpenApiCatalog(
            self.table, self._fetch_openapi, refresh_seconds=self.config.openapi_refresh_seconds
        )
        self._readiness: tuple[float, dict[str, str]] = (-1e9, {})
        self.container.provide(ROUTE_TABLE, self.table)
        self.container.provide(CATALOG, self.catalog)

    async def start(self) -> None:
        self.catalog.start()
        self._watcher = asyncio.create_task(self._watch_open_circuits(), name="circuit-watch")

    async def stop(self) -> None:
        self._watcher.cancel()
        await asyncio.gather(self._watcher, return_exceptions=True)
        await self.catalog.stop()
        await self.session.close()
        for pool in self.pools.values():
            await pool.close()

    def wrap(self, app: ASGIApp) -> ASGIApp:
        return ProxyApp(app, pools=self.pools, config=self.config)

    async def health(self) -> Health:
        """Each upstream's readiness: a required one out fails it, an optional one degrades."""
        status = await self.upstream_status()
        down = {n: s for n, s in status.items() if s not in ("ready", "degraded")}
        if not down:
            return Health(ok=True, detail=", ".join(f"{n}: ready" for n in status))
        required = any(self.table.upstreams[n].config.required for n in down)
        detail = ", ".join(f"{n}: {s}" for n, s in status.items())
        return Health(ok=False, detail=detail, critical=required)

    async def upstream_status(self) -> dict[str, str]:
        checked_at, cached = self._readiness
        if time.monotonic() - checked_at < self.config.readiness_cache_seconds:
            return cached
        names = list(self.table.upstreams)
        results = await asyncio.gather(*(self._probe(self.table.upstreams[n]) for n in names))
        status = dict(zip(names, results, strict=True))
        # Ready means routed and validated by the upstream's own document: one that answers
        # but whose document the gateway does not hold yet is asked for it now, and is not
        # ready until it has been read (requests meanwhile would match by prefix only).
        held = self.catalog.available()
        missing = [n for n in names if status[n] in ("ready", "degraded") and not held[n]]
        if missing:
            await self.catalog.refresh(missing)
            held = self.catalog.available()
            status.update({n: "unready (no OpenAPI document yet)" for n in missing if not held[n]})
        self._readiness = (time.monotonic(), status)
        return status

    def describe(self) -> dict[str, Any]:
        return {
            name: {
                "url": u.config.url,
                "prefixes": u.config.prefixes,
                "required": u.config.required,
                "circuit": u.breaker.state.value,
                "openapi": self.catalog.available()[name],
            }
            for name, u in self.table.upstreams.items()
        }

    async def _probe(self, upstream: Upstream) -> str:
        # Under the container's 2 s limit for a health check, so a hung upstream reads as
        # "unreachable" (degraded) instead of failing the whole routing plugin.
        timeout = aiohttp.ClientTimeout(total=min(1.5, upstream.config.timeout_seconds))
        try:
            async with self.session.get(
                upstream.config.url + upstream.config.ready_path, timeout=timeout
            ) as response:
                if response.status == 200:
                    body = await response.json(content_type=None)
                    return "degraded" if body.get("status") == "degraded" else "ready"
                return f"unready ({response.status})"
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return f"unreachable ({type(exc).__name__})"

    async def _watch_open_circuits(self) -> None:
        """Ask each upstream whose circuit is open for its readiness, twice a second: the
        circuit lets a request probe as soon as the upstream answers, not after its whole
        open period."""
        while True:
            await asyncio.sleep(CIRCUIT_WATCH_SECONDS)
            upstreams = [
                u for u in self.table.upstreams.values() if u.breaker.state is CircuitState.OPEN
            ]
            statuses = await asyncio.gather(*(self._probe(u) for u in upstreams))
            for upstream, status in zip(upstreams, statuses, strict=True):
                if status in ("ready", "degraded"):
                    upstream.breaker.upstream_ready()

    async def _fetch_openapi(self, upstream: Upstream) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=min(5.0, upstream.config.timeout_seconds))
        async with self.session.get(
            upstream.config.url + upstream.config.openapi_path, timeout=timeout
        ) as response:
            response.raise_for_status()
            document: dict[str, Any] = await response.json(content_type=None)
            return document

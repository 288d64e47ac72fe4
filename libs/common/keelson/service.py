"""What every service's entry point does: standard plugins, logging, monitoring, uvicorn;
and `provided`, how its handlers reach what the plugins provide."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

import uvicorn
from fastapi import APIRouter, FastAPI, Request
from starlette.types import ASGIApp

from keelson.bus import bus_plugin
from keelson.cache import CachePlugin
from keelson.config import ConfigError, KeelsonSettings, load_settings
from keelson.db import DatabasePlugin, migrate, migrations_dir
from keelson.http import Hook, create_app
from keelson.logging import configure_logging
from keelson.monitor import init_monitoring
from keelson.plugins import Key, Plugin, PluginContainer
from keelson.redis_plugin import RedisPlugin

__all__ = [
    "ServiceFront",
    "build_container",
    "create_service_app",
    "provided",
    "run_service",
    "startup_settings",
]

S = TypeVar("S", bound=KeelsonSettings)
T = TypeVar("T")


class ServiceFront(Protocol):
    """Builds a service's front layer around its app's own stack (see `create_service_app`)."""

    def __call__(self, app: ASGIApp, *, container: PluginContainer) -> ASGIApp: ...


def startup_settings(cls: type[S]) -> S:
    """Settings from the environment for a starting process, with logging and monitoring on.

    An invalid value ends the process with a message naming the setting (no traceback).
    """
    try:
        settings = load_settings(cls)
    except ConfigError as exc:
        raise SystemExit(f"{cls.__module__}.{cls.__qualname__}: {exc}") from None
    configure_logging(settings)
    init_monitoring(settings)
    return settings


def build_container(
    settings: KeelsonSettings,
    plugins: Sequence[type[Plugin]] = (),
    *,
    database: bool = True,
) -> PluginContainer:
    """A container with the infrastructure plugins the settings call for, then `plugins`."""
    container = PluginContainer(settings)
    if settings.redis_url is not None:
        container.register(RedisPlugin)
    container.register(bus_plugin(settings))
    if database:
        container.register(DatabasePlugin)
    container.register(CachePlugin)
    for plugin in plugins:
        container.register(plugin)
    return container


def create_service_app(
    settings: KeelsonSettings,
    *,
    plugins: Sequence[type[Plugin]] = (),
    routers: Sequence[APIRouter] = (),
    title: str,
    description: str = "",
    database: bool = True,
    on_startup: Sequence[Hook] = (),
    on_shutdown: Sequence[Hook] = (),
    front: ServiceFront | None = None,
) -> FastAPI:
    """A service's app: `build_container(settings, plugins)` behind `keelson.http.create_app`.

    A service's factory is then `create_service_app(settings or startup_settings(Settings),
    plugins=[...], routers=routers, title=...)`. `front(app, container)`, when given, is
    `create_app`'s front: a layer that answers some requests itself (a hot path spared
    FastAPI's routing and dependency solving) and passes the others on to `app`.
    """
    container = build_container(settings, plugins, database=database)
    return create_app(
        settings,
        container=container,
        routers=routers,
        title=title,
        description=description,
        on_startup=on_startup,
        on_shutdown=on_shutdown,
        front=None if front is None else functools.partial(front, container=container),
    )


def provided(key: Key[T]) -> Callable[[Request], Awaitable[T]]:
    """A dependency answering what the app's plugins provided under `key`, declared as
    `Annotated[KeyRing, Depends(provided(KEYRING))]` in a service's `deps.py`."""

    # async: FastAPI runs a plain `def` dependency in a worker thread, a hop per request.
    async def resolve(request: Request) -> T:
        container: PluginContainer = request.app.state.container
        return container.resolve(key)

    return resolve


def run_service(
    package: str,
    settings_cls: type[KeelsonSettings],
    argv: Sequence[str] | None = None,
    *,
    proxy_headers: bool = True,
    serve: Callable[[KeelsonSettings, int], None] | None = None,
) -> None:
    """`python -m <package> [--migrate]`: optionally migrate, then serve `create_app`.

    `serve(settings, workers)`, when given, serves instead of uvicorn (the gateway runs
    granian for its connection limits, see `gateway.connections`).

    With `proxy_headers`, uvicorn believes the client address and scheme in
    X-Forwarded-For/-Proto from the `trusted_proxies` only (the gateway); with none
    configured, from no one.
    """
    parser = argparse.ArgumentParser(prog=f"python -m {package}")
    parser.add_argument("--migrate", action="store_true", help="upgrade the schema first")
    parser.add_argument("--migrate-only", action="store_true", help="upgrade and exit")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    settings = startup_settings(settings_cls)
    if args.migrate or args.migrate_only:
        if settings.database_url is None:
            raise SystemExit("KEELSON_DATABASE_URL is not set; nothing to migrate")
        migrate(migrations_dir(package), settings.database_url)
        if args.migrate_only:
            return
    if serve is not None:
        serve(settings, args.workers)
        return
    uvicorn.run(
        f"{package}.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=args.workers,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        date_header=True,
        proxy_headers=proxy_headers and bool(settings.trusted_proxies),
        forwarded_allow_ips=settings.trusted_proxies,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
    )

"""What every service's entry point does: standard plugins, logging, monitoring, uvicorn."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from keelson.bus import bus_plugin
from keelson.cache import CachePlugin
from keelson.config import KeelsonSettings, load_settings
from keelson.db import DatabasePlugin, migrate
from keelson.logging import configure_logging
from keelson.monitor import init_monitoring
from keelson.plugins import Plugin, PluginContainer
from keelson.redis_plugin import RedisPlugin

__all__ = ["build_container", "run_service"]


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


def run_service(
    package: str, settings_cls: type[KeelsonSettings], argv: Sequence[str] | None = None
) -> None:
    """`python -m <package> [--migrate]`: optionally migrate, then serve `create_app`."""
    parser = argparse.ArgumentParser(prog=f"python -m {package}")
    parser.add_argument("--migrate", action="store_true", help="upgrade the schema first")
    parser.add_argument("--migrate-only", action="store_true", help="upgrade and exit")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    settings = load_settings(settings_cls)
    configure_logging(settings)
    init_monitoring(settings)
    if args.migrate or args.migrate_only:
        module = importlib.import_module(package)
        assert module.__file__ is not None
        migrations = Path(module.__file__).parent / "migrations"
        if settings.database_url is None:
            raise SystemExit("KEELSON_DATABASE_URL is not set; nothing to migrate")
        migrate(migrations, settings.database_url)
        if args.migrate_only:
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
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
    )

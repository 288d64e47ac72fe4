"""Config reload without a restart: re-read settings, hand each plugin its new section."""

from __future__ import annotations

import asyncio
import logging
import signal

from fastapi import FastAPI

from gateway.pipeline import Pipeline
from keelson.config import ConfigError, load_settings
from keelson.plugins import PluginContainer

__all__ = ["install_sighup", "reload_config"]

_log = logging.getLogger("gateway.reload")


def reload_config(app: FastAPI) -> list[str]:
    """Reload route policies, limits and the like; returns the plugins that took new config.

    Upstream URLs and ports are read at start only. Invalid new config is refused whole and
    the running config stays.
    """
    container: PluginContainer = app.state.container
    pipeline: Pipeline = app.state.pipeline
    settings = load_settings(type(container.settings))
    plugins = pipeline.running()
    appliers = [p.prepare_reload(settings.plugin(p.metadata.name)) for p in plugins]
    for apply in appliers:
        apply()
    pipeline.rebuild()
    names = [p.metadata.name for p in plugins]
    _log.info("configuration reloaded for %s", ", ".join(names))
    return names


def install_sighup(app: FastAPI) -> None:
    """SIGHUP reloads config (only possible in the main thread; tests use the admin API).

    Under granian (`python -m gateway`) a SIGHUP to the server's main process is granian's
    own: it replaces the workers, which read the configuration anew as they start, once
    `gateway.serve` has checked that the configuration loads (a bad one is refused there).
    This handler serves a gateway whose worker gets the signal itself (uvicorn in the main
    thread); `POST /api/v1/admin/reload` reloads without replacing the worker.
    """

    def on_sighup() -> None:
        try:
            reload_config(app)
        except ConfigError as exc:
            _log.error("reload refused: %s", exc)

    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_sighup)
    except (RuntimeError, ValueError, NotImplementedError):
        _log.debug("SIGHUP reload not available outside the main thread")

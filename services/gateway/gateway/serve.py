"""`python -m gateway` serves on granian: its HTTP/1 settings bound the request head (read
time, idle keep-alive time, size) while reading, which uvicorn offers no setting for. See
`gateway.connections` for what each limit does and docs/benchmarks.md for the measurement.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from types import FrameType

from granian import Granian
from granian.constants import HTTPModes, Interfaces, Loops
from granian.http import HTTP1Settings

from gateway.settings import Settings
from keelson.config import KeelsonSettings, load_settings
from keelson.draining import DRAIN_MARKER_ENV
from keelson.lifeline import SERVER_PID_ENV

__all__ = ["serve"]

_log = logging.getLogger("gateway.serve")


def serve(settings: KeelsonSettings, workers: int) -> None:
    """Run `gateway.app:create_served_app` on granian with the `connections` limits."""
    assert isinstance(settings, Settings)
    limits = settings.connections
    server = Granian(
        "gateway.app:create_served_app",
        factory=True,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        workers=workers,
        loop=Loops.uvloop,
        # HTTP/1.1 only, as before (HTTP/2 has settings of its own, not bounded here).
        http=HTTPModes.http1,
        http1_settings=HTTP1Settings(
            header_read_timeout=int(limits.head_timeout_seconds * 1000),
            keep_alive=True,
            max_buffer_size=limits.max_head_bytes,
        ),
        websockets=False,
        # Keelson's logging (configured in the worker by the app factory) writes the
        # records; granian's own access log stays off, as uvicorn's was.
        log_access=False,
        workers_kill_timeout=max(1, int(settings.shutdown_grace_seconds)),
    )
    server.on_startup(_check_configuration_before_reload)
    # The workers, forked next, stop when this process dies (`gateway.app.create_served_app`).
    os.environ[SERVER_PID_ENV] = str(os.getpid())
    if settings.drain_pause_seconds <= 0:
        server.serve()
        return
    marker = Path(tempfile.mkdtemp(prefix="keelson-gateway-")) / "draining"
    os.environ[DRAIN_MARKER_ENV] = str(marker)  # the workers, spawned next, read it
    server.on_startup(lambda: _drain_before_stopping(marker, settings.drain_pause_seconds))
    try:
        server.serve()
    finally:
        shutil.rmtree(marker.parent, ignore_errors=True)


def _drain_before_stopping(marker: Path, pause: float) -> None:
    """SIGTERM as a load balancer needs it, for granian's worker processes: the main process
    gets the signal; it turns every worker's readiness off at once (the marker file) and
    hands the signal to granian, which stops the workers gracefully, `pause` seconds later.
    A second SIGTERM is handed on at once."""
    stop = signal.getsignal(signal.SIGTERM)
    if not callable(stop):
        return

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if marker.exists():
            stop(signum, frame)
            return
        marker.touch()
        _log.info("SIGTERM: readiness off, the listener closes in %.1fs", pause)
        threading.Timer(pause, stop, (signum, None)).start()

    signal.signal(signal.SIGTERM, on_sigterm)


def _check_configuration_before_reload() -> None:
    """Guard granian's SIGHUP (installed before its startup hooks run) with a check.

    granian answers SIGHUP by replacing its workers, which read the configuration as they
    start: one that does not load would leave no worker, and granian would stop. Here, in the
    server's main process, the new configuration is loaded and the app built from it first
    (every plugin validates its own section); if that fails, the reload is refused with an
    error and the running workers keep serving the configuration they have.
    """
    replace_workers = signal.getsignal(signal.SIGHUP)

    def on_sighup(signum: int, frame: FrameType | None) -> None:
        from gateway.app import create_app

        try:
            create_app(load_settings(Settings))
        except Exception as exc:  # whatever stops a worker from starting stops the reload
            _log.error("SIGHUP: reload refused, the workers keep their configuration: %s", exc)
            return
        if callable(replace_workers):
            replace_workers(signum, frame)

    signal.signal(signal.SIGHUP, on_sighup)

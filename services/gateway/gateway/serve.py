"""`python -m gateway` serves on granian: its HTTP/1 settings bound the request head (read
time, idle keep-alive time, size) while reading, which uvicorn offers no setting for. See
`gateway.connections` for what each limit does and docs/benchmarks.md for the measurement.
"""

from __future__ import annotations

from granian import Granian
from granian.constants import HTTPModes, Interfaces, Loops
from granian.http import HTTP1Settings

from gateway.settings import Settings
from keelson.config import KeelsonSettings

__all__ = ["serve"]


def serve(settings: KeelsonSettings, workers: int) -> None:
    """Run `gateway.app:create_served_app` on granian with the `connections` limits."""
    assert isinstance(settings, Settings)
    limits = settings.connections
    Granian(
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
    ).serve()

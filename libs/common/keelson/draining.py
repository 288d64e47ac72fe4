"""SIGTERM as a load balancer needs it: readiness fails first, the listener closes later.

uvicorn closes its listening socket as soon as SIGTERM arrives, while whatever routes to
the process (the gateway's health checks, a Kubernetes endpoint list) still believes it
ready. `drain_on_sigterm` puts a handler in front of the server's: on the first SIGTERM it
turns readiness off at once (`on_drain`) and hands the signal to the server only after
`pause` seconds, so that routing has moved away before connections are refused. The
server then drains what is in flight as usual. A second SIGTERM is passed on at once.
In Kubernetes the preStop hook's sleep plays the same part (the pause can be 0 there).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

__all__ = ["DRAIN_MARKER_ENV", "drain_on_sigterm", "draining_elsewhere"]

_log = logging.getLogger("keelson.draining")

# A server whose workers are processes of their own (the gateway on granian) gets SIGTERM in
# its main process: that process creates the file this variable names, and each worker's
# readiness turns 503 as soon as it exists.
DRAIN_MARKER_ENV = "KEELSON_DRAIN_MARKER"


def draining_elsewhere() -> bool:
    """Whether the server's main process has started draining (see `DRAIN_MARKER_ENV`)."""
    marker = os.environ.get(DRAIN_MARKER_ENV)
    return marker is not None and os.path.exists(marker)


def drain_on_sigterm(pause: float, on_drain: Callable[[], None]) -> Callable[[], None]:
    """Install the handler (from the running loop's thread); returns what uninstalls it.

    Nothing is installed, and the server's handler stays, when `pause` is 0, outside the
    main thread, or when no Python handler is there to hand the signal to.
    """
    previous = signal.getsignal(signal.SIGTERM)
    if pause <= 0 or threading.current_thread() is not threading.main_thread():
        return lambda: None
    if not callable(previous):
        return lambda: None
    server_handler: Callable[[int, FrameType | None], object] = previous
    loop = asyncio.get_running_loop()
    received = False

    def hand_over(signum: int) -> None:
        _log.info("drain pause over: the listener closes, in-flight requests finish")
        server_handler(signum, None)

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal received
        if received:
            server_handler(signum, frame)  # asked twice: stop now
            return
        received = True
        on_drain()
        _log.info("SIGTERM: readiness off, the listener closes in %.1fs", pause)
        loop.call_soon_threadsafe(loop.call_later, pause, hand_over, signum)

    signal.signal(signal.SIGTERM, handler)

    def uninstall() -> None:
        if signal.getsignal(signal.SIGTERM) is handler:
            signal.signal(signal.SIGTERM, previous)

    return uninstall

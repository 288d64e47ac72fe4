"""A server's worker process that stops when the main process that started it dies.

A pre-fork server (granian) runs the app in worker processes that share its listening
socket. When the main process is SIGKILLed, nothing stops them: re-parented, they keep
serving on the inherited socket, so the outage is not one, and the server started in its
place cannot bind the port or shares it with them. `tie_to_parent`, called in the worker,
stops it as its main process would have.

On Linux the kernel sends the stop signal the moment the parent dies
(`prctl(PR_SET_PDEATHSIG)`, prctl(2)); elsewhere a daemon thread that looks at
`os.getppid()` a few times a second sends it. Either way the thread then allows `grace`
seconds for a graceful stop and SIGKILLs the process after that, as the main process
would (granian's `workers_kill_timeout`).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time

__all__ = ["SERVER_PID_ENV", "tie_to_parent"]

_log = logging.getLogger("keelson.lifeline")

# Set by the main process before it starts its workers, which inherit the environment.
SERVER_PID_ENV = "KEELSON_SERVER_PID"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_POLL_SECONDS = 0.25


def tie_to_parent(parent: int, *, stop_signal: int, grace: float) -> None:
    """Send this process `stop_signal` once `parent` is no longer its parent, and SIGKILL
    it `grace` seconds later if it has not ended by then.

    Call it from the worker's main thread. A parent already gone when it is called counts
    as dying then. The signal is sent once: a second one may cut the graceful stop short.
    """
    armed = _ask_the_kernel(stop_signal)
    # The parent may have died before the kernel was asked: it would never say so.
    orphaned = os.getppid() != parent
    if orphaned:
        armed = False
    watch = threading.Thread(
        target=_watch,
        args=(parent, stop_signal, grace, armed),
        name="keelson-lifeline",
        daemon=True,
    )
    watch.start()


def _ask_the_kernel(stop_signal: int) -> bool:
    """Whether the kernel will send `stop_signal` when the parent dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        done: int = libc.prctl(_PR_SET_PDEATHSIG, stop_signal, 0, 0, 0)
    except (OSError, AttributeError):
        return False
    return done == 0


def _watch(parent: int, stop_signal: int, grace: float, armed: bool) -> None:
    while os.getppid() == parent:
        time.sleep(_POLL_SECONDS)
    _log.warning("the server's main process (pid %d) is gone: this worker stops", parent)
    if not armed:
        os.kill(os.getpid(), stop_signal)
    time.sleep(grace)
    _log.error("this worker did not stop within %.1fs of its main process: killed", grace)
    os.kill(os.getpid(), signal.SIGKILL)

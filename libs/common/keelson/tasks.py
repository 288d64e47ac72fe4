"""Background asyncio tasks that are asked to stop, given time to finish, then cancelled."""

from __future__ import annotations

import asyncio

__all__ = ["finish_or_cancel"]


async def finish_or_cancel(task: asyncio.Task[None], timeout: float) -> bool:
    """Wait up to `timeout` for `task` to end by itself, else cancel it; True if it finished.

    The caller has already told the task to stop (a flag, an event). Cancelling the caller
    while it waits does not cancel the task: it is shielded until the timeout.
    """
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout)
    except TimeoutError:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return False
    return True

"""Background asyncio tasks that are asked to stop, given time to finish, then cancelled."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

__all__ = ["cancel_and_wait", "finish_or_cancel"]


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel each task (None is skipped) and wait for it to end, one after the other.

    The task's own cancellation is swallowed; any other exception it ends with propagates.
    """
    for task in tasks:
        if task is None:
            continue
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


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

import asyncio

import pytest

from keelson.tasks import cancel_and_wait, finish_or_cancel


async def test_a_task_that_stops_when_asked_finishes_by_itself() -> None:
    stop, finished = asyncio.Event(), []

    async def worker() -> None:
        await stop.wait()
        finished.append(True)

    task = asyncio.create_task(worker())
    stop.set()
    assert await finish_or_cancel(task, timeout=5) is True
    assert finished == [True]


async def test_a_task_that_ignores_the_request_is_cancelled_at_the_timeout() -> None:
    cancelled = []

    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    task = asyncio.create_task(stubborn())
    assert await finish_or_cancel(task, timeout=0.05) is False
    assert task.cancelled() and cancelled == [True]


async def test_cancel_and_wait_ends_every_task_and_skips_none() -> None:
    tasks = [asyncio.create_task(asyncio.Event().wait()) for _ in range(2)]
    await cancel_and_wait(tasks[0], None, tasks[1])
    assert all(task.cancelled() for task in tasks)


async def test_cancel_and_wait_lets_another_exception_through() -> None:
    waiting = asyncio.Event()

    async def fails_when_cancelled() -> None:
        try:
            waiting.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    task = asyncio.create_task(fails_when_cancelled())
    await waiting.wait()
    with pytest.raises(RuntimeError, match="cleanup failed"):
        await cancel_and_wait(task)

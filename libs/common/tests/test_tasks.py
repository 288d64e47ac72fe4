import asyncio

from keelson.tasks import finish_or_cancel


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

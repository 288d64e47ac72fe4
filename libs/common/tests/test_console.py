"""The console handler: lines batched per event-loop tick, none lost, none reordered."""

import asyncio
import gc
import io
import json
import logging
import os
import subprocess
import sys
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from keelson.logging import ConsoleHandler, JsonFormatter, log_access_record
from keelson_dev.testing import eventually


@pytest.fixture
def console() -> Iterator[Callable[[], tuple[logging.Logger, io.StringIO]]]:
    made: list[logging.Logger] = []

    def make() -> tuple[logging.Logger, io.StringIO]:
        stream = io.StringIO()
        handler = ConsoleHandler(stream)
        handler.setFormatter(JsonFormatter("svc"))
        logger = logging.getLogger(f"test.console.{len(made)}")
        logger.handlers, logger.propagate = [handler], False
        logger.setLevel(logging.INFO)
        made.append(logger)
        return logger, stream

    yield make
    for logger in made:
        for handler in logger.handlers:
            handler.close()
        logger.handlers = []


def messages(stream: io.StringIO) -> list[str]:
    return [json.loads(line)["message"] for line in stream.getvalue().splitlines()]


def test_without_an_event_loop_each_line_is_written_at_once(console) -> None:
    logger, stream = console()
    logger.info("one")
    assert messages(stream) == ["one"]
    log_access_record(logger, logging.INFO, "GET", "/x", 200, 0.001)
    assert messages(stream) == ["one", "GET /x 200 1.0ms"]


async def test_on_an_event_loop_the_lines_of_a_tick_go_out_together_in_order(console) -> None:
    logger, stream = console()
    logger.info("one")
    log_access_record(logger, logging.INFO, "GET", "/x", 200, 0.001)
    logger.warning("three")
    assert stream.getvalue() == ""  # still this tick
    await eventually(lambda: len(messages(stream)) == 3)
    assert messages(stream) == ["one", "GET /x 200 1.0ms", "three"]


async def test_an_error_writes_what_is_pending_and_itself_at_once(console) -> None:
    logger, stream = console()
    logger.info("before")
    logger.error("failed")
    assert messages(stream) == ["before", "failed"]
    log_access_record(logger, logging.ERROR, "GET", "/x", 500, 0.001)
    assert messages(stream)[-1] == "GET /x 500 1.0ms"


async def test_close_and_another_thread_write_what_is_pending(console) -> None:
    logger, stream = console()
    logger.info("from the loop")
    await asyncio.to_thread(logger.info, "from a thread")
    assert messages(stream) == ["from the loop", "from a thread"]
    logger.info("last")
    logger.handlers[0].close()
    assert messages(stream)[-1] == "last"


_SERVICE = """
import asyncio, logging, sys
from keelson.config import Environment, KeelsonSettings, LogFormat, LogSettings
from keelson.logging import configure_logging, log_access_record

log = LogSettings(ship_endpoint=None, format=LogFormat.JSON)
configure_logging(KeelsonSettings(env=Environment.TEST, service="svc", log=log))
access, app = logging.getLogger("svc.access"), logging.getLogger("svc.app")

async def serve() -> None:
    for i in range(3000):
        log_access_record(access, logging.INFO, "GET", f"/items/{i}", 200, 0.001)
        app.info("line %d", i)
        if i % 7 == 0:
            await asyncio.sleep(0)
    if sys.argv[1] == "stop":  # the loop stops before the end of this tick comes
        asyncio.get_running_loop().stop()

if sys.argv[1] == "stop":
    asyncio.get_event_loop_policy().get_event_loop().create_task(serve())
    asyncio.get_event_loop_policy().get_event_loop().run_forever()
else:
    asyncio.run(serve())
"""


@pytest.mark.parametrize("ending", ["return", "stop"])
def test_a_process_that_stops_normally_has_written_every_line(ending: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _SERVICE, ending], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line)["message"] for line in done.stderr.splitlines()]
    expected = [m for i in range(3000) for m in (f"GET /items/{i} 200 1.0ms", f"line {i}")]
    assert lines == expected


def test_a_fork_writes_what_is_pending_first_so_the_child_does_not_repeat_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "console.log"
    with path.open("w") as stream:
        handler = ConsoleHandler(stream)
        handler.setFormatter(JsonFormatter("svc"))
        logger = logging.getLogger("test.console.fork")
        logger.handlers, logger.propagate = [handler], False
        logger.setLevel(logging.INFO)

        async def log_and_fork() -> int:
            logger.info("before fork")  # pending: on a loop, until this tick ends
            pid = os.fork()
            if pid == 0:
                handler.flush()  # what the child's exit would write
                os._exit(0)
            return os.waitpid(pid, 0)[1]

        # asyncio.run returns once the tick has ended, with the handler's flush in it.
        status = asyncio.run(log_and_fork())
        logger.handlers = []
        handler.close()
    assert os.waitstatus_to_exitcode(status) == 0
    lines = path.read_text().splitlines()
    assert [json.loads(line)["message"] for line in lines] == ["before fork"]


def test_a_handler_no_longer_used_is_not_kept_alive_by_its_fork_hook() -> None:
    handler = ConsoleHandler(io.StringIO())
    handler.close()
    collected = weakref.ref(handler)
    del handler
    gc.collect()
    assert collected() is None

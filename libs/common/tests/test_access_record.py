"""`log_access_record`: the record `logger.log` would write, without a LogRecord."""

import io
import json
import logging
import random
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import zmq

from keelson.logging import (
    REDACTED,
    ConsoleHandler,
    JsonFormatter,
    LogShipper,
    TextFormatter,
    bind,
    log_access_record,
)
from keelson.logging._access import ACCESS_MESSAGE, _request_line
from keelson.logging._format import STANDARD_ATTRS
from keelson.logging._redact import _is_secret_key, is_quiet_head, redact_text
from keelson_dev.embedded import free_port
from keelson_dev.testing import eventually

CLOCK = re.compile(r" \d\d:\d\d:\d\d ")
USER = "6f1c0b7e-1d2a-4c55-9a51-0b1f0d3c2e11"
Call = tuple[str, str, int, float, str | None, dict[str, Any]]
CALLS: list[Call] = [
    ("GET", "/api/orders/{order_id}", 200, 0.001234, "10.0.0.7", {"user_id": USER}),
    ("POST", "unmatched", 404, 0.0005, None, {}),
    ("PUT", "/things", 503, 2.5, "::1", {"request_id": "req-from-field", "user_id": None}),
    # free-form values are redacted the same way on both paths
    ("GET", "/oauth/token=x", 200, 0.01, "sk_live_abcdefgh12", {"note": "password=hunter2"}),
    ("GET", "/x", 200, 0.01, "10.0.0.1", {"request_id": "4111111111111111", "api_key": "k"}),
]


def old_path(logger: logging.Logger, level: int, call: Call) -> None:
    """What the access record used to be: one `logger.log` with the fields as extras."""
    method, route, status, seconds, client_ip, fields = call
    ms = seconds * 1000
    extra = {
        "method": method,
        "route": route,
        "status": status,
        "duration_ms": round(ms, 3),
        "client_ip": client_ip,
        **fields,
    }
    logger.log(level, ACCESS_MESSAGE, method, route, status, ms, extra=extra)


def new_path(logger: logging.Logger, level: int, call: Call) -> None:
    method, route, status, seconds, client_ip, fields = call
    log_access_record(logger, level, method, route, status, seconds, client_ip, **fields)


@pytest.fixture
def make_logger() -> Iterator[Callable[..., logging.Logger]]:
    made: list[logging.Logger] = []

    def make(*handlers: logging.Handler, level: int = logging.INFO) -> logging.Logger:
        logger = logging.getLogger(f"test.access.{len(made)}")
        logger.handlers, logger.propagate = list(handlers), False
        logger.setLevel(level)
        made.append(logger)
        return logger

    yield make
    for logger in made:
        for handler in logger.handlers:
            handler.close()
        logger.handlers = []


def console(formatter: logging.Formatter) -> tuple[ConsoleHandler, io.StringIO]:
    stream = io.StringIO()
    handler = ConsoleHandler(stream)
    handler.setFormatter(formatter)
    return handler, stream


def without_id_and_time(line: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(line)
    assert len(data.pop("id")) == 32
    assert data.pop("ts").endswith("Z")
    return data


@pytest.mark.parametrize("level", [logging.INFO, logging.WARNING])
def test_the_json_line_equals_the_old_paths_field_by_field(
    make_logger: Callable[..., logging.Logger], level: int
) -> None:
    old_handler, old_stream = console(JsonFormatter("gateway"))
    new_handler, new_stream = console(JsonFormatter("gateway"))
    old_logger, new_logger = make_logger(old_handler), make_logger(new_handler)
    with bind(request_id="req-1", trace_id="t" * 32, user_id="user-from-context"):
        for call in CALLS:
            old_path(old_logger, level, call)
            new_path(new_logger, level, call)
    old_lines = old_stream.getvalue().splitlines()
    new_lines = new_stream.getvalue().splitlines()
    assert len(new_lines) == len(CALLS)
    for old, new in zip(old_lines, new_lines, strict=True):
        old_data, new_data = without_id_and_time(old), without_id_and_time(new)
        assert new_data["logger"] != old_data["logger"]  # two loggers, the rest is equal
        old_data.pop("logger"), new_data.pop("logger")
        assert new_data == old_data
        assert list(new_data["attrs"]) == list(old_data["attrs"])
    first, *_, card = map(json.loads, new_lines)
    assert first["message"] == "GET /api/orders/{order_id} 200 1.2ms"
    assert first["attrs"] == {
        "method": "GET",
        "route": "/api/orders/{order_id}",
        "status": 200,
        "duration_ms": 1.234,
        "client_ip": "10.0.0.7",
    }
    assert (first["request_id"], first["trace_id"]) == ("req-1", "t" * 32)
    assert first["user_id"] == USER and first["service"] == "gateway"
    assert first["level"] == logging.getLevelName(level)
    assert card["request_id"] == "[CARD]" and card["attrs"]["api_key"] == REDACTED
    assert "hunter2" not in new_stream.getvalue() and "sk_live" not in new_stream.getvalue()


def test_the_text_line_equals_the_old_paths(make_logger: Callable[..., logging.Logger]) -> None:
    old_handler, old_stream = console(TextFormatter("gateway", colour=True))
    new_handler, new_stream = console(TextFormatter("gateway", colour=True))
    logger = make_logger()
    with bind(request_id="req-1"):
        for call in CALLS:
            logger.handlers = [old_handler]
            old_path(logger, logging.WARNING, call)
            logger.handlers = [new_handler]
            new_path(logger, logging.WARNING, call)
    logger.handlers = [old_handler, new_handler]  # closed by the fixture
    old_lines = re.sub(CLOCK, "", old_stream.getvalue()).splitlines()
    new_lines = re.sub(CLOCK, "", new_stream.getvalue()).splitlines()
    assert new_lines == old_lines and len(new_lines) == len(CALLS)
    assert "\x1b[33mWARNING" in new_lines[0] and "status=200" in new_lines[0]


class Receiver:
    """A log service that acknowledges every batch and keeps its records."""

    def __init__(self) -> None:
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.records: list[dict[str, Any]] = []
        self._seen: set[str] = set()
        self._stop = threading.Event()
        self._bound = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._bound.wait(5)

    def _run(self) -> None:
        context = zmq.Context()
        socket = context.socket(zmq.ROUTER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.bind(self.endpoint)
        self._bound.set()
        while not self._stop.is_set():
            if socket.poll(20):
                identity, _, batch_id, payload = socket.recv_multipart()
                # Kept once per record id, as the log service stores them: a batch whose
                # acknowledgement came late on a loaded machine is sent again.
                for record in (orjson.loads(line) for line in payload.split(b"\n")):
                    if record["id"] not in self._seen:
                        self._seen.add(record["id"])
                        self.records.append(record)
                socket.send_multipart([identity, b"ACK", batch_id])
        socket.close(0)
        context.term()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


async def test_the_shipped_record_equals_the_old_paths_and_the_console_lines(
    make_logger: Callable[..., logging.Logger], tmp_path: Path
) -> None:
    receiver = Receiver()
    try:
        shipper = LogShipper(receiver.endpoint, service="gateway", spill_dir=tmp_path)
        handler, stream = console(JsonFormatter("gateway"))
        logger = make_logger(handler, shipper)
        with bind(request_id="req-1", trace_id="t" * 32):
            for call in CALLS:
                old_path(logger, logging.INFO, call)
                new_path(logger, logging.INFO, call)
        await eventually(lambda: len(receiver.records) == 2 * len(CALLS))
    finally:
        receiver.stop()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    shipped = {record["id"]: record for record in receiver.records}
    for line in lines:  # the console line and the shipped record of each call match
        record = shipped[line["id"]]
        assert {**record, "ts": line["ts"]} == line
        assert isinstance(record["ts"], float)
    for old, new in zip(receiver.records[::2], receiver.records[1::2], strict=True):
        assert {**new, "id": "", "ts": 0} == {**old, "id": "", "ts": 0}


def test_levels_of_the_logger_and_its_handlers_apply(
    make_logger: Callable[..., logging.Logger],
) -> None:
    handler, stream = console(JsonFormatter("gateway"))
    logger = make_logger(handler, level=logging.WARNING)
    new_path(logger, logging.INFO, CALLS[0])
    assert stream.getvalue() == ""
    new_path(logger, logging.WARNING, CALLS[0])
    assert json.loads(stream.getvalue())["level"] == "WARNING"
    logger.setLevel(logging.INFO)
    handler.setLevel(logging.ERROR)
    new_path(logger, logging.WARNING, CALLS[0])
    assert len(stream.getvalue().splitlines()) == 1


def test_a_foreign_handler_gets_the_old_paths_log_record(
    make_logger: Callable[..., logging.Logger], caplog: pytest.LogCaptureFixture
) -> None:
    handler, stream = console(JsonFormatter("gateway"))
    logger = make_logger(handler)
    logger.propagate = True  # up to caplog's handler on the root logger
    caplog.set_level(logging.INFO, logger=logger.name)
    with bind(request_id="req-1"):
        new_path(logger, logging.INFO, CALLS[0])
    (record,) = [r for r in caplog.records if r.name == logger.name]
    assert record.getMessage() == "GET /api/orders/{order_id} 200 1.2ms"
    assert (record.method, record.route, record.status) == ("GET", "/api/orders/{order_id}", 200)
    assert (record.duration_ms, record.client_ip, record.user_id) == (1.234, "10.0.0.7", USER)
    assert json.loads(stream.getvalue())["attrs"]["route"] == "/api/orders/{order_id}"


def test_a_filter_on_the_logger_still_filters(make_logger: Callable[..., logging.Logger]) -> None:
    handler, stream = console(JsonFormatter("gateway"))
    logger = make_logger(handler)
    logger.addFilter(lambda record: record.status != 404)
    for call in CALLS[:2]:
        new_path(logger, logging.INFO, call)
    assert [json.loads(line)["attrs"]["status"] for line in stream.getvalue().splitlines()] == [200]


def test_field_names_logger_log_refuses_are_refused(
    make_logger: Callable[..., logging.Logger],
) -> None:
    logger = make_logger(console(JsonFormatter("gateway"))[0])
    with pytest.raises(KeyError):
        log_access_record(logger, logging.INFO, "GET", "/x", 200, 0.1, None, msg="x")


def test_the_fixed_field_names_are_not_secret_names() -> None:
    """Only free-form values need redaction: no fixed field is redacted by its name."""
    for name in ("method", "route", "status", "duration_ms", "client_ip", "request_id"):
        assert not _is_secret_key(name) and name not in STANDARD_ATTRS


_ROUTE_PARTS = (
    *("/api", "/v1", "/orders", "/{order_id}", "/token", "=", ":", "/bearer", " basic", "_"),
    *("/4111", "1111", "-", " ", "12", "/eyJhbGciOi", ".eyJzdWIi", ".", "sk_live_", "abcdefgh"),
    *("password", "Secret", "/\u212aey", "\u00e9", "unmatched", "9", "%", "%d", "%%"),
)


def test_the_access_message_is_redacted_exactly_as_a_whole_message_would_be() -> None:
    """Skipping the scan of a quiet method and route must never change the message."""
    rng = random.Random(20261123)
    quiet = scanned = changed = 0
    for _ in range(20_000):
        method = rng.choice(("GET", "POST", "eyJhbGciOi.x", "TOKEN=", "4111111111", "sk_x"))
        route = "".join(rng.choices(_ROUTE_PARTS, k=rng.randint(1, 6)))
        status = rng.choice((200, 404, 503, 12345678, -1))
        ms = rng.choice((0.04, 1.234, 987.65, 1e6, 1.2345678e9, 1e12))
        expected = redact_text(ACCESS_MESSAGE % (method, route, status, ms))
        assert _request_line(method, route).message(status, ms) == expected, (method, route)
        if is_quiet_head(f"{method} {route}"):
            quiet += 1
        else:
            scanned += 1
        changed += expected != ACCESS_MESSAGE % (method, route, status, ms)
    assert min(quiet, scanned, changed) >= 1000, (quiet, scanned, changed)

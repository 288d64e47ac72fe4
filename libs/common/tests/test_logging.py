import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from keelson.config import Environment, KeelsonSettings, LogFormat, LogSettings
from keelson.logging import (
    REDACTED,
    JsonFormatter,
    LogShipper,
    TextFormatter,
    bind,
    configure_logging,
    current_context,
    record_to_dict,
    redact_text,
    redact_value,
)


def make_record(
    msg: str, *args: object, level: int = logging.INFO, **extra: object
) -> logging.LogRecord:
    record = logging.LogRecord("app.orders", level, __file__, 10, msg, args or None, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


@pytest.fixture
def restore_root() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


def test_json_format_carries_bound_context_and_extras() -> None:
    with bind(request_id="req-1", trace_id="t" * 32, user_id="user-9"):
        line = JsonFormatter("orders").format(make_record("paid %s", "order-7", amount=1200))
    data = json.loads(line)
    assert data["service"] == "orders"
    assert data["level"] == "INFO"
    assert data["logger"] == "app.orders"
    assert data["message"] == "paid order-7"
    assert (data["request_id"], data["trace_id"], data["user_id"]) == ("req-1", "t" * 32, "user-9")
    assert data["attrs"] == {"amount": 1200}
    assert data["ts"].endswith("Z") and "T" in data["ts"]
    assert len(data["id"]) == 32


def test_explicit_extra_ids_win_over_bound_context() -> None:
    with bind(request_id="from-context"):
        data = record_to_dict(make_record("x", request_id="from-extra"), "svc")
    assert data["request_id"] == "from-extra"
    assert "request_id" not in data["attrs"]


def test_text_format_is_readable_without_colour() -> None:
    with bind(request_id="req-2"):
        line = TextFormatter("auth", colour=False).format(make_record("login ok", attempt=2))
    assert line.startswith("[auth] ")
    assert "INFO" in line and "app.orders: login ok" in line
    assert "request_id=req-2" in line and "attempt=2" in line
    assert "\x1b[" not in line


def test_text_format_colours_on_request() -> None:
    line = TextFormatter("auth", colour=True).format(make_record("boom", level=logging.ERROR))
    assert "\x1b[31m" in line


def test_exceptions_are_formatted_and_redacted() -> None:
    try:
        raise ValueError("password=hunter2 rejected")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    data = record_to_dict(record, "svc")
    assert "ValueError" in data["attrs"]["exception"]
    assert "hunter2" not in data["attrs"]["exception"]


def test_bind_nests_and_restores() -> None:
    assert current_context()["request_id"] is None
    with bind(request_id="outer", user_id="u1"):
        with bind(request_id="inner"):
            assert current_context() == {"request_id": "inner", "trace_id": None, "user_id": "u1"}
        assert current_context()["request_id"] == "outer"
    assert current_context() == {"request_id": None, "trace_id": None, "user_id": None}


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("login with password=hunter2 failed", "hunter2"),
        ('body {"password": "s3cr3t!"}', "s3cr3t!"),
        ("context={'password': 'py-repr-secret'}", "py-repr-secret"),
        ("token=abcdef123456", "abcdef123456"),
        ("Authorization: Bearer abcdefghijklmnop.qrstu", "abcdefghijklmnop"),
        ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA=="),
        ("jwt eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJl here", "eyJzdWIiOiIxMjMifQ"),
        ("card 4242 4242 4242 4242 charged", "4242 4242 4242 4242"),
        ("card 4000056655665556 charged", "4000056655665556"),
        ("stripe key sk_test_51Habcdefghijkl", "sk_test_51Habcdefghijkl"),
        ("api_key: AKIA1234567890", "AKIA1234567890"),
    ],
)
def test_secrets_are_redacted_from_messages(text: str, secret: str) -> None:
    assert secret not in redact_text(text)
    data = record_to_dict(make_record("%s", text), "svc")
    assert secret not in data["message"]


def test_ordinary_text_is_left_alone() -> None:
    text = "order 42 shipped to Oslo in 3 days"
    assert redact_text(text) == text


def test_secret_attributes_are_redacted_by_name_and_content() -> None:
    data = record_to_dict(
        make_record(
            "request",
            password="hunter2",
            headers={"Authorization": "Bearer abcdefghijk", "Accept": "json"},
            note="paid with 5555 5555 5555 4444",
            card_number="4111111111111111",
            items=[{"token": "t-1"}, "plain"],
        ),
        "svc",
    )
    attrs = data["attrs"]
    assert attrs["password"] == REDACTED
    assert attrs["headers"] == {"Authorization": REDACTED, "Accept": "json"}
    assert "5555 5555 5555 4444" not in attrs["note"]
    assert attrs["card_number"] == REDACTED
    assert attrs["items"] == [{"token": REDACTED}, "plain"]
    assert redact_value("count", 3) == 3


def test_configure_logging_installs_the_shipper_only_when_asked(
    restore_root: logging.Logger, tmp_path: Path
) -> None:
    log = LogSettings(ship_endpoint="tcp://127.0.0.1:1", spill_dir=tmp_path, format=LogFormat.JSON)
    settings = KeelsonSettings(env=Environment.TEST, service="svc", log=log)
    configure_logging(settings)
    shippers = [h for h in restore_root.handlers if isinstance(h, LogShipper)]
    assert len(shippers) == 1 and shippers[0].service == "svc"
    assert any(isinstance(h.formatter, JsonFormatter) for h in restore_root.handlers)

    configure_logging(settings, ship=False)
    assert not any(isinstance(h, LogShipper) for h in restore_root.handlers)
    assert not shippers[0]._thread.is_alive()

    configure_logging(settings.model_copy(update={"log": LogSettings(ship_endpoint=None)}))
    assert not any(isinstance(h, LogShipper) for h in restore_root.handlers)
    assert restore_root.level == logging.INFO

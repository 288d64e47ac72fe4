import json
import logging
import os
import random
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
from keelson.logging._redact import _PATTERNS, _redact_all


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


@pytest.mark.parametrize(
    ("ts", "msecs", "stamp"),
    [
        (0.0, 0.0, "1970-01-01T00:00:00.000Z"),
        (1_700_000_000.007, 7.0, "2023-11-14T22:13:20.007Z"),
        (1_700_000_000.9999, 999.0, "2023-11-14T22:13:20.999Z"),
    ],
)
def test_json_timestamps_carry_the_records_milliseconds(
    ts: float, msecs: float, stamp: str
) -> None:
    formatter = JsonFormatter("orders")
    fields = record_to_dict(make_record("x"), "orders") | {"ts": ts}
    assert json.loads(formatter.format_fields(fields, msecs))["ts"] == stamp
    assert fields["ts"] == ts  # the caller's dict (the shipped one) keeps its float


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


def test_bind_restores_after_an_exception_and_refuses_unknown_names() -> None:
    with pytest.raises(RuntimeError), bind(request_id="doomed", trace_id="t-1"):
        assert current_context()["trace_id"] == "t-1"
        raise RuntimeError
    assert current_context() == {"request_id": None, "trace_id": None, "user_id": None}
    with pytest.raises(KeyError):
        bind(request_id="r", tenant="t")
    assert current_context()["request_id"] is None


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


# Pieces of secrets, their separators, and the non-ASCII characters the fast path must
# not misjudge: case variants IGNORECASE folds to ASCII (long s, Kelvin sign) and digits
# `\\d` matches (Arabic-Indic).
_WORDS = "password PassWD pass secret SECRET token Token api_key Api-KEY apikey api key "
_WORDS += "Authorization authorisation cvc CVV bearer Basic BEARER eyJ eyJhbGciOi eyj sk_ "
_WORDS += "rk_ whsec_ live_ test 4242 4 0 1234567890 abcdefgh XyZ12345 +/= order [REDACTED]"
_FRAGMENTS = (*_WORDS.split(), "-", " ", "  ", "\t", "\n", "=", ":", ".", ",", "&", "'", '"', "_")
_NON_ASCII = ("\u017f", "\u212a", "\u0664\u0662", "\u0664", "\u00e9", "\u0130")
_KEYS = (
    *("password", "PASSWD", "Secret", "token", "api_key", "apiKey", "api-key", "cvc", "CVV"),
    *("authorization", "pass", "\u017fecret", "api_\u212aey"),
)
_SEPARATORS = ("=", ":", ": ", " = '", '": "', "'='", " ", "=\u00e9")
_SCHEMES = ("bearer ", "Basic ", "BEARER\t", "basic  ", "bearer")
_VALUES = ("abcdefgh", "XyZ12345678", "a", "hunter2", "s3cr3t!", "t0k-\u00e9n", "\u0664" * 9)
_STRIPE = ("sk_", "rk_", "whsec_", "sk_live_", "rk_test_", "sk")
_DB_HEADS = ("DETAIL:  Key (email)=(", "query argument $2: ", "[parameters: (", "DETAIL:")
_ARGON2_HEADS = ("$argon2id$v=19$m=65536,t=3,p=4$", "$argon2i$", "$argon2$", "$argon2d$x")


def _secret_shaped(rng: random.Random) -> str:
    value = rng.choice(_VALUES)
    digit_groups = (
        "".join(rng.choices("0123456789" * 3 + "\u0664", k=rng.randint(1, 6)))
        for _ in range(rng.randint(1, 5))
    )
    shapes = (
        f"{rng.choice(_KEYS)}{rng.choice(_SEPARATORS)}{value}",
        f"{rng.choice(_SCHEMES)}{value}",
        f"eyJ{value}.{rng.choice(_VALUES)}.{rng.choice(_VALUES)}",
        rng.choice(("", " ", "-")).join(digit_groups),
        f"{rng.choice(_STRIPE)}{value}",
        f"{rng.choice(_DB_HEADS)}{value}",
        f"{rng.choice(_ARGON2_HEADS)}{value}",
    )
    return rng.choice(shapes)


def _random_text(rng: random.Random) -> str:
    pieces = []
    for _ in range(rng.randint(1, 10)):
        roll = rng.random()
        if roll < 0.03:
            pieces.append(rng.choice(_NON_ASCII))
        elif roll < 0.6:
            pieces.append(rng.choice(_FRAGMENTS))
        else:
            pieces.append(_secret_shaped(rng))
    return "".join(pieces)


def test_the_fast_path_redacts_exactly_what_every_pattern_would() -> None:
    """Skipping a pattern must never change the outcome: compare with all patterns run."""
    rng = random.Random(20261123)
    texts = [_random_text(rng) for _ in range(20_000)]
    for text in texts:
        assert redact_text(text) == _redact_all(text), text
    # The corpus exercises every pattern, on ASCII text (the fast path) and on other text.
    for ascii_only in (True, False):
        sample = [text for text in texts if text.isascii() is ascii_only]
        for pattern, _ in _PATTERNS:
            assert sum(1 for text in sample if pattern.search(text)) >= 100, pattern


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("\u017fecret=long-s-secret", "long-s-secret"),  # re folds the long s to "s"
        ("api_\u212aey: kelvin-secret", "kelvin-secret"),  # and the Kelvin sign to "k"
        ("card \u0664\u0662\u0664\u0662" * 4 + " charged", "\u0664\u0662\u0664\u0662" * 4),
        ("Z\u00fcrich password=hunter2", "hunter2"),
        ("short cvc=123", "123"),
        ("PASSWORD = 'spaced-out'", "spaced-out"),
        ("x sk_live_abcdefgh12 y", "sk_live_abcdefgh12"),
        ("4111-1111-1111-1111", "4111-1111-1111-1111"),
    ],
)
def test_secrets_the_pre_checks_must_not_skip(text: str, secret: str) -> None:
    assert secret not in redact_text(text)


def test_secret_key_names_stay_redacted_on_every_call() -> None:
    for _ in range(3):  # the key-name verdict is cached after the first call
        assert redact_value("X-Api-Key", "abc") == REDACTED
        assert redact_value("order_id", "ord-1") == "ord-1"


def test_records_without_extras_have_empty_attrs_and_fresh_ids() -> None:
    first = record_to_dict(make_record("token=abcdef123456"), "svc")
    second = record_to_dict(make_record("plain"), "svc")
    assert first["attrs"] == {} and second["attrs"] == {}
    assert "abcdef123456" not in first["message"]
    assert first["id"] != second["id"]
    assert all(len(r["id"]) == 32 and int(r["id"], 16) >= 0 for r in (first, second))


def test_a_forked_child_never_repeats_its_parents_record_ids() -> None:
    parent = record_to_dict(make_record("parent"), "svc")["id"]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, record_to_dict(make_record("child"), "svc")["id"].encode())
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(child) == 32 and child[:16] != parent[:16]
    assert record_to_dict(make_record("parent again"), "svc")["id"][:16] == parent[:16]


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

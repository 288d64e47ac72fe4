"""sentry-sdk really sends to a local HTTP endpoint standing in for Sentry."""

import gzip
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import sentry_sdk

from keelson import monitor
from keelson.config import KeelsonSettings


class _Sentry(BaseHTTPRequestHandler):
    received: list[bytes] = []
    arrived = threading.Event()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        encoding = self.headers.get("Content-Encoding")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "br":
            import brotli

            body = brotli.decompress(body)
        _Sentry.received.append(body)
        _Sentry.arrived.set()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def sentry_server() -> Iterator[int]:
    server = HTTPServer(("127.0.0.1", 0), _Sentry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    sentry_sdk.init(dsn=None)
    monitor._enabled = False


def test_off_without_dsn_is_a_logging_no_op(caplog: pytest.LogCaptureFixture) -> None:
    assert monitor.init_monitoring(KeelsonSettings()) is False
    with caplog.at_level("DEBUG", logger="keelson.monitor"):
        monitor.capture_exception(
            ValueError("boom"), context={"order": 1, "password": "off-path-secret"}
        )
        monitor.add_breadcrumb("charged", card_token="tok-secret-1")
        with monitor.trace("work"):
            pass
    assert "boom" in caplog.text and "'order': 1" in caplog.text
    assert "off-path-secret" not in caplog.text
    assert "tok-secret-1" not in caplog.text


def test_exception_reaches_sentry_with_secrets_scrubbed(sentry_server: int) -> None:
    settings = KeelsonSettings(sentry_dsn=f"http://publickey@127.0.0.1:{sentry_server}/1")
    assert monitor.init_monitoring(settings) is True
    card_holder_password = uuid.uuid4().hex  # a local a careless frame dump would carry
    # Made at run time: source lines travel with the stack, and they are not secrets.
    in_message, in_crumb = uuid.uuid4().hex, uuid.uuid4().hex
    monitor.add_breadcrumb("calling the bank", authorization=f"Bearer {in_crumb}")
    try:
        raise RuntimeError(f"payment failed: token={in_message}")
    except RuntimeError as exc:
        monitor.capture_exception(
            exc, context={"password": card_holder_password, "order_id": "o-1"}
        )
    sentry_sdk.flush(timeout=5)
    assert _Sentry.arrived.wait(5)
    payload = b"\n".join(_Sentry.received).decode()
    assert "payment failed" in payload
    assert "o-1" in payload
    assert card_holder_password not in payload
    assert in_message not in payload
    assert in_crumb not in payload
    assert "calling the bank" in payload
    events = [json.loads(line) for line in payload.splitlines() if line.startswith("{")]
    assert any(e.get("tags", {}).get("service") == "keelson" for e in events)

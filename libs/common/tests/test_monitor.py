"""sentry-sdk really sends to a local HTTP endpoint standing in for Sentry."""

import asyncio
import gzip
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import sentry_sdk
from jose import jwk, jwt

from keelson import monitor
from keelson.auth import ALGORITHM, DEFAULT_AUDIENCE, DEFAULT_ISSUER
from keelson.config import KeelsonSettings
from keelson.keys import SigningKey
from keelson_dev.embedded import free_port
from keelson_dev.testing import eventually


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


# ------------------------------------------------ a service process, started every way

APP_DIR = Path(__file__).resolve().parent  # holds the monitored_app package


class _Ingest(BaseHTTPRequestHandler):
    """Sentry's ingest endpoint (envelopes at /api/<project>/envelope/), and a JWKS."""

    jwks: bytes = b""
    envelopes: list[bytes] = []
    lock = threading.Lock()

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.jwks)))
        self.end_headers()
        self.wfile.write(self.jwks)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        elif self.headers.get("Content-Encoding") == "br":
            import brotli

            body = brotli.decompress(body)
        if self.path == "/api/1/envelope/":
            with _Ingest.lock:
                _Ingest.envelopes.append(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


def _items(envelope: bytes) -> Iterator[tuple[dict[str, Any], bytes]]:
    """(item header, payload) of a Sentry envelope: a header line, then per item a header
    line and a payload of `length` bytes, or up to the next newline without one."""
    _, _, rest = envelope.partition(b"\n")
    while rest.strip():
        line, _, rest = rest.partition(b"\n")
        header = json.loads(line)
        if "length" in header:
            payload, rest = rest[: header["length"]], rest[header["length"] + 1 :]
        else:
            payload, _, rest = rest.partition(b"\n")
        yield header, payload


def _events() -> list[dict[str, Any]]:
    with _Ingest.lock:
        envelopes = list(_Ingest.envelopes)
    return [
        json.loads(payload)
        for envelope in envelopes
        for header, payload in _items(envelope)
        if header.get("type") == "event"
    ]


@pytest.fixture
def ingest() -> Iterator[tuple[int, SigningKey]]:
    key = SigningKey.generate()
    _Ingest.jwks = json.dumps({"keys": [key.public_jwk()]}).encode()
    _Ingest.envelopes = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ingest)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], key
    server.shutdown()


WAYS = {
    "python -m": ["-m", "monitored_app"],
    "uvicorn --factory": ["-m", "uvicorn", "--factory", "monitored_app.app:create_app"],
    "uvicorn --factory --workers 2": [
        "-m", "uvicorn", "--factory", "monitored_app.app:create_app", "--workers", "2",
    ],
}  # fmt: skip


@pytest.mark.timeout(120)
@pytest.mark.parametrize("way", list(WAYS))
def test_an_unhandled_error_reaches_sentry_with_the_user_id_breadcrumbs_and_trace(
    ingest: tuple[int, SigningKey], way: str, tmp_path: Path
) -> None:
    """However the service is started, a failing request's event reaches the ingest
    endpoint: the user's id (not their email), the breadcrumbs leading to it, the request's
    W3C trace id as its Sentry trace; no token, card token or password in it."""
    ingest_port, key = ingest
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEELSON_")}
    env.pop("SENTRY_DSN", None)
    env.update(
        PYTHONPATH=os.pathsep.join([str(APP_DIR), env.get("PYTHONPATH", "")]),
        SENTRY_DSN=f"http://publickey@127.0.0.1:{ingest_port}/1",
        KEELSON_ENV="test",
        KEELSON_SERVICE="monitored",
        KEELSON_HOST="127.0.0.1",
        KEELSON_PORT=str(port),
        KEELSON_LOG__SHIP_ENDPOINT=f"tcp://127.0.0.1:{free_port()}",
        KEELSON_BUS__ZMQ_XSUB_ENDPOINT=f"tcp://127.0.0.1:{free_port()}",
        KEELSON_BUS__ZMQ_XPUB_ENDPOINT=f"tcp://127.0.0.1:{free_port()}",
        KEELSON_PLUGINS__AUTH__JWKS_URL=f"http://127.0.0.1:{ingest_port}/jwks.json",
    )
    command = [sys.executable, *WAYS[way]]
    if "uvicorn" in command:
        command += ["--host", "127.0.0.1", "--port", str(port)]
    log = tmp_path / "service.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"

        def live() -> bool:
            assert process.poll() is None, log.read_text()
            try:
                return httpx.get(f"{base}/health/live", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        asyncio.run(eventually(live, timeout=60, interval=0.1))
        user_id, email = str(uuid.uuid4()), f"{uuid.uuid4().hex[:10]}@example.com"
        now = int(time.time())
        claims = {
            "iss": DEFAULT_ISSUER, "aud": DEFAULT_AUDIENCE, "sub": user_id, "email": email,
            "roles": ["user"], "scope": "profile:read", "sid": str(uuid.uuid4()),
            "jti": uuid.uuid4().hex, "iat": now, "nbf": now, "exp": now + 300,
        }  # fmt: skip
        token = jwt.encode(
            claims, jwk.construct(key.private_pem, ALGORITHM), algorithm=ALGORITHM,
            headers={"kid": key.kid},
        )  # fmt: skip
        trace_id, card_token = uuid.uuid4().hex, f"tok_{uuid.uuid4().hex}"
        order = f"o-{uuid.uuid4().hex[:8]}"
        answer = httpx.post(
            f"{base}/api/v1/orders/{order}/charge",
            json={"card_token": card_token},
            headers={
                "Authorization": f"Bearer {token}",
                "traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01",
            },
            timeout=10,
        )
        assert answer.status_code == 500, answer.text
        assert "the bank hung up" not in answer.text  # the client learns only that it failed

        def event() -> dict[str, Any] | None:
            for candidate in _events():
                values = (candidate.get("exception") or {}).get("values") or []
                if any(v.get("type") == "RuntimeError" for v in values):
                    return candidate
            return None

        found = asyncio.run(eventually(event, timeout=30, interval=0.1))
    finally:
        process.terminate()
        process.wait(30)
    assert found["user"] == {"id": user_id}
    crumbs = [c.get("message") for c in found["breadcrumbs"]["values"]]
    assert crumbs[-2:] == ["order loaded", "charging the card"], crumbs
    assert found["contexts"]["trace"]["trace_id"] == trace_id
    assert found["tags"]["trace_id"] == trace_id and found["tags"]["service"] == "monitored"
    assert order in json.dumps(found["exception"])
    everything = b"\n".join(_Ingest.envelopes).decode(errors="replace")
    for secret in (token, email, card_token):
        assert secret not in everything

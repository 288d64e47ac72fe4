"""Slow, oversized and malformed requests on the gateway's public port (issue 14, items 3
and 9), over raw sockets. The suite runs with the limits of `conftest.py` (3 s head and
body timeouts, a 32 KiB head); docs/security.md lists the cases.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from .conftest import BODY_TIMEOUT, HEAD_TIMEOUT, RunningSuite

pytestmark = pytest.mark.timeout(300)
# How much later than its limit a close may come on this shared, loaded machine.
SLACK = 20.0


def _connect(suite: RunningSuite) -> socket.socket:
    port = int(suite.gateway.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=HEAD_TIMEOUT + SLACK)
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except ConnectionResetError:
        pass
    return answer


def _status(answer: bytes) -> int:
    return int(answer.split(b"\r\n", 1)[0].split()[1])


def _head(answer: bytes) -> dict[bytes, bytes]:
    lines = answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines)}


@pytest.mark.parametrize(
    "sent",
    [b"", b"GET /health/live HTTP/1.1\r\nHost: gateway\r\nX-Slow: "],
    ids=["nothing", "half-a-head"],
)
def test_a_client_that_sends_no_whole_head_is_disconnected(
    suite: RunningSuite, sent: bytes
) -> None:
    """Sent: nothing, or half a request head, then silence. Holds: the gateway closes the
    connection after the head timeout (no earlier than it, and well before the test's own
    socket timeout), answering nothing: there is no request to answer."""
    with _connect(suite) as sock:
        started = time.monotonic()
        sock.sendall(sent)
        answer = _read_until_closed(sock)
        waited = time.monotonic() - started
    assert answer == b""
    assert HEAD_TIMEOUT * 0.8 <= waited < HEAD_TIMEOUT + SLACK, waited


def test_an_idle_kept_alive_connection_is_closed(suite: RunningSuite) -> None:
    """Sent: one whole request on a kept-alive connection, then silence. Holds: the answer
    arrives, then the gateway closes the idle connection after the head timeout."""
    with _connect(suite) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: gateway\r\n\r\n")
        started = time.monotonic()
        answer = _read_until_closed(sock)
        waited = time.monotonic() - started
    assert _status(answer) == 200, answer[:200]
    assert answer.count(b"HTTP/1.1") == 1
    assert HEAD_TIMEOUT * 0.8 <= waited < HEAD_TIMEOUT + SLACK, waited


def test_a_stalled_body_is_answered_408(suite: RunningSuite) -> None:
    """Sent: a POST to the gateway's handshake route declaring 100 bytes of body, 10 of
    them, then silence. Holds: 408 problem+json with `Connection: close` after the body timeout, and
    the connection closed."""
    head = (
        b"POST /api/v1/handshake HTTP/1.1\r\nHost: gateway\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    with _connect(suite) as sock:
        started = time.monotonic()
        sock.sendall(head + b'{"public_')
        answer = _read_until_closed(sock)
        waited = time.monotonic() - started
    assert _status(answer) == 408, answer[:300]
    headers = _head(answer)
    assert headers[b"content-type"] == b"application/problem+json"
    assert headers[b"connection"] == b"close"
    problem = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert problem["status"] == 408
    assert BODY_TIMEOUT * 0.8 <= waited < BODY_TIMEOUT + SLACK, waited


def test_a_body_that_keeps_coming_is_not_cut_off(suite: RunningSuite) -> None:
    """Sent: a body in pieces, each sooner than the body timeout but the whole longer than
    it, to the handshake route (public, not a login: this address's login budget is not
    spent). Holds: the route answers (its 422 for a key that is none; no 408): the limit is
    per stall."""
    body = json.dumps({"public_key": "slow-but-steady-" + "x" * 40}).encode()
    pieces = [body[i : i + 8] for i in range(0, len(body), 8)]
    pause = BODY_TIMEOUT * 1.5 / len(pieces)
    head = (
        b"POST /api/v1/handshake HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
    )
    with _connect(suite) as sock:
        sock.sendall(head)
        for piece in pieces:
            time.sleep(pause)  # the client's pace, not synchronisation
            sock.sendall(piece)
        answer = _read_until_closed(sock)
    assert _status(answer) == 422, answer[:300]  # the route judged the body it read whole
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["status"] == 422


def test_an_8_mb_head_is_refused_with_431_while_it_is_read(suite: RunningSuite) -> None:
    """Sent: a request head of 8 MB (one header), written in 64 KiB pieces. Holds: 431,
    and the gateway closes the connection long before the head is all sent (it stops
    reading at its 32 KiB cap instead of buffering the head whole)."""
    head = b"GET /health/live HTTP/1.1\r\nHost: gateway\r\nX-Big: " + b"a" * 8_000_000
    sent = 0
    with _connect(suite) as sock:
        try:
            for start in range(0, len(head), 65536):
                sock.sendall(head[start : start + 65536])
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = _read_until_closed(sock)
    assert _status(answer) == 431, answer[:300]
    assert _head(answer).get(b"connection") == b"close"
    assert sent < len(head), "the gateway read the whole 8 MB head"


@pytest.mark.parametrize(
    "request_line",
    [b"GARBAGE\r\n\r\n", b"GET /\x00 HTTP/1.1\r\nHost: gateway\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n"],
    ids=["no-method-or-version", "nul-in-target", "unknown-version"],
)
def test_a_malformed_request_is_answered_400_without_a_body(
    suite: RunningSuite, request_line: bytes
) -> None:
    """Sent: a malformed request line. Holds (pinned): 400, `Connection: close`, an empty
    body (`Content-Length: 0`), then the connection closed. granian (hyper) answers before
    any application code runs and offers no hook to shape that answer, so it cannot be
    problem+json; it is at least not the `text/plain` message uvicorn wrote."""
    with _connect(suite) as sock:
        sock.sendall(request_line)
        answer = _read_until_closed(sock)
    assert _status(answer) == 400, answer[:300]
    headers = _head(answer)
    assert headers[b"connection"] == b"close"
    assert headers[b"content-length"] == b"0"
    assert b"content-type" not in headers
    assert answer.endswith(b"\r\n\r\n")

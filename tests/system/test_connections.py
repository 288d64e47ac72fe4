"""Slow, oversized and malformed requests on the gateway's public port (issue 14, items 3
and 9), over raw sockets. The suite runs with the limits of `conftest.py` (3 s head and
body timeouts, a 32 KiB head); docs/security.md lists the cases.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from .conftest import BODY_TIMEOUT, HEAD_TIMEOUT, RunningSuite, read_until_closed

pytestmark = pytest.mark.timeout(300)
# How much later than its limit a close may come on this shared, loaded machine.
SLACK = 20.0


def _connect(suite: RunningSuite) -> socket.socket:
    port = int(suite.gateway.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=HEAD_TIMEOUT + SLACK)
    return sock


def _read_head_and_body(sock: socket.socket) -> bytes:
    """One answer with a Content-Length: its head and that much body."""
    answer = b""
    while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < int(
        _head(answer).get(b"content-length", b"0")
    ):
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
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
        answer = read_until_closed(sock)
        waited = time.monotonic() - started
    assert answer == b""
    assert HEAD_TIMEOUT * 0.8 <= waited < HEAD_TIMEOUT + SLACK, waited


def test_an_idle_kept_alive_connection_is_closed(suite: RunningSuite) -> None:
    """Sent: one whole request on a kept-alive connection, then silence. Holds: the answer
    arrives, then the gateway closes the idle connection after the head timeout."""
    with _connect(suite) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: gateway\r\n\r\n")
        started = time.monotonic()
        answer = read_until_closed(sock)
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
        answer = read_until_closed(sock)
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
        answer = read_until_closed(sock)
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
        answer = read_until_closed(sock)
    assert _status(answer) == 431, answer[:300]
    assert _head(answer).get(b"connection") == b"close"
    assert sent < len(head), "the gateway read the whole 8 MB head"


# What granian (hyper, httparse) refuses before any application code runs (granian 2.8.9).
REFUSED_BY_GRANIAN = {
    "no-method-or-version": b"GARBAGE\r\n\r\n",
    "unknown-version": b"GET / HTTP/9.9\r\n\r\n",
    "http-2-in-an-http-1-line": b"GET / HTTP/2.0\r\nHost: gateway\r\n\r\n",
    "bad-method-token": b"G(T / HTTP/1.1\r\nHost: gateway\r\n\r\n",
    "nul-in-target": b"GET /\x00 HTTP/1.1\r\nHost: gateway\r\n\r\n",
    "control-in-target": b"GET /a\x1bb HTTP/1.1\r\nHost: gateway\r\n\r\n",
    "tab-in-target": b"GET /a\tb HTTP/1.1\r\nHost: gateway\r\n\r\n",
    "relative-target": b"GET health/live HTTP/1.1\r\nHost: gateway\r\n\r\n",
    "control-in-header-value": b"GET / HTTP/1.1\r\nHost: gateway\r\nX-A: b\x00c\r\n\r\n",
    "cr-in-header-value": b"GET / HTTP/1.1\r\nHost: gateway\r\nX-A: b\rc\r\n\r\n",
    "space-in-header-name": b"GET / HTTP/1.1\r\nHost: gateway\r\nX A: b\r\n\r\n",
    "space-before-colon": b"GET / HTTP/1.1\r\nHost: gateway\r\nX-A : b\r\n\r\n",
    "header-without-colon": b"GET / HTTP/1.1\r\nHost: gateway\r\nX-A\r\n\r\n",
    "obsolete-line-folding": b"GET / HTTP/1.1\r\nHost: gateway\r\nX-A: b\r\n c\r\n\r\n",
    "content-length-not-a-number": b"POST / HTTP/1.1\r\nHost: gateway\r\n"
    b"Content-Length: abc\r\n\r\n",
    "content-length-signed": b"POST / HTTP/1.1\r\nHost: gateway\r\nContent-Length: +2\r\n\r\nab",
    "content-length-a-list": b"POST / HTTP/1.1\r\nHost: gateway\r\nContent-Length: 2, 2\r\n\r\nab",
    "two-content-lengths": b"POST / HTTP/1.1\r\nHost: gateway\r\nContent-Length: 2\r\n"
    b"Content-Length: 3\r\n\r\nabc",
    "content-length-overflow": b"POST / HTTP/1.1\r\nHost: gateway\r\n"
    b"Content-Length: 99999999999999999999999\r\n\r\n",
    "unknown-transfer-coding": b"POST / HTTP/1.1\r\nHost: gateway\r\n"
    b"Transfer-Encoding: gzip\r\n\r\nab",
    "chunked-not-last": b"POST / HTTP/1.1\r\nHost: gateway\r\n"
    b"Transfer-Encoding: chunked, gzip\r\n\r\n2\r\nab\r\n0\r\n\r\n",
    "chunked-in-http-1.0": b"POST / HTTP/1.0\r\nHost: gateway\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("request_line", REFUSED_BY_GRANIAN.values(), ids=REFUSED_BY_GRANIAN.keys())
def test_a_malformed_request_is_answered_400_without_a_body(
    suite: RunningSuite, request_line: bytes
) -> None:
    """Sent: a request head granian's parser refuses. Holds (pinned): 400,
    `Connection: close`, an empty body (`Content-Length: 0`), then the connection closed.
    granian (hyper) answers before any application code runs and offers no hook to shape
    that answer (no setting in 2.8.9, the newest release), so it cannot be problem+json;
    it is at least not the `text/plain` message uvicorn wrote, and names no server."""
    with _connect(suite) as sock:
        sock.sendall(request_line)
        answer = read_until_closed(sock)
    assert _status(answer) == 400, answer[:300]
    headers = _head(answer)
    assert headers[b"connection"] == b"close"
    assert headers[b"content-length"] == b"0"
    assert b"content-type" not in headers
    assert b"server" not in headers
    assert answer.endswith(b"\r\n\r\n")


PARSED_BUT_MALFORMED = {
    # granian hands these on (a target it could not read as a path as ""); the gateway
    # answers them.
    "target-not-a-path": b"GET x HTTP/1.1\r\nHost: gateway\r\n\r\n",
    "authority-form": b"CONNECT gateway:443 HTTP/1.1\r\nHost: gateway\r\n\r\n",
    # granian reports a chunked body it cannot decode as the client's disconnect.
    "bad-chunk-size": b"POST /api/v1/handshake HTTP/1.1\r\nHost: gateway\r\n"
    b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
    "chunk-longer-than-said": b"POST /api/v1/handshake HTTP/1.1\r\nHost: gateway\r\n"
    b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab\r\n0\r\n\r\n",
    "bad-chunk-proxied": b"POST /api/v1/auth/login HTTP/1.1\r\nHost: gateway\r\n"
    b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
}


@pytest.mark.parametrize(
    "request_line", PARSED_BUT_MALFORMED.values(), ids=PARSED_BUT_MALFORMED.keys()
)
def test_a_malformed_request_granian_hands_on_is_400_problem_json(
    suite: RunningSuite, request_line: bytes
) -> None:
    """Sent: a request granian parses but that is malformed: a target that is not a path,
    or a chunked body that does not decode (to a gateway route and to a proxied one).
    Holds: 400 problem+json from the gateway. Before: the target went on to routing (401
    or 200), and a bad chunk was granian's own `text/plain` 500."""
    with _connect(suite) as sock:
        sock.sendall(request_line)
        answer = _read_head_and_body(sock)
    assert _status(answer) == 400, answer[:300]
    headers = _head(answer)
    assert headers[b"content-type"] == b"application/problem+json"
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["status"] == 400


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET /health/live HTTP/1.1\r\nHost: gateway\r\n\r\n",
        b"GET /nowhere HTTP/1.1\r\nHost: gateway\r\n\r\n",
        b"GET /api/v1/auth/me HTTP/1.1\r\nHost: gateway\r\n\r\n",
        b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: gateway\r\n\r\n",
        PARSED_BUT_MALFORMED["bad-chunk-size"],
    ],
    ids=["ok", "not-found", "problem", "proxied", "body-unreadable"],
)
def test_no_answer_names_its_server_implementation(
    suite: RunningSuite, request_line: bytes
) -> None:
    """Sent: a request answered 200, one answered 404, one answered a 401 problem, one
    proxied to auth, one whose body does not decode. Holds: each answer's `server` header
    is `keelson`: no `granian` (granian adds its own name to an answer without one)."""
    with _connect(suite) as sock:
        sock.sendall(request_line)
        answer = _read_head_and_body(sock)
    assert _head(answer)[b"server"] == b"keelson", answer[:300]
    assert b"granian" not in answer.lower()

"""keelson.server: a response's head and body leave in one write, streams are not held.

Counted where it shows, in the kernel: the client socket's `tcp_info.tcpi_data_segs_in`
is the number of data segments it received (each write by a server with TCP_NODELAY, as
uvloop sets it, is one segment on loopback).
"""

import asyncio
import contextlib
import gc
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from uvicorn.protocols.http.httptools_impl import HEADER_RE, HEADER_VALUE_RE, HttpToolsProtocol

from keelson.config import KeelsonSettings, LogSettings
from keelson.http import KeelsonApp, create_app
from keelson.plugins import PluginContainer
from keelson.server import _NAME_BYTES, _VALUE_BYTES, CLIENT_GONE
from keelson.testing import LiveServer, eventually

# struct tcp_info (linux/tcp.h): tcpi_data_segs_in is the u32 at byte 152.
_DATA_SEGS_IN = 152
streamed = threading.Event()
left: dict[str, str] = {}  # what the app saw when its client had left
client_closed = threading.Event()
gone: dict[str, bool] = {}  # what the scope's CLIENT_GONE said before and after
waited: dict[str, object] = {}  # what two receive() calls at once got


async def _lane(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["path"] == "/lane/stream":
        # A stream: the head must reach the client before any body exists.
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.to_thread(streamed.wait, 10)
        await send({"type": "http.response.body", "body": b"late", "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if scope["path"] == "/lane/leave":
        head = [(b"content-length", b"4")]
        await send({"type": "http.response.start", "status": 200, "headers": head})
        while (await receive())["type"] != "http.disconnect":
            pass
        try:
            await send({"type": "http.response.body", "body": b"late"})
        except Exception as exc:  # what stock uvicorn never raises here
            left["outcome"] = repr(exc)
        else:
            left["outcome"] = "sent"
        return
    if scope["path"] == "/lane/gone":
        # Waits on something other than `receive()`, as the gateway waits on an upstream.
        client_gone = scope["extensions"][CLIENT_GONE]
        gone["before"] = client_gone()
        await asyncio.to_thread(client_closed.wait, 10)
        gone["after"] = client_gone()
        return
    if scope["path"] == "/lane/as":
        # An answer shaped by the query: status, Content-Length or none, Connection: close,
        # the body in one part or several.
        query = dict(p.split("=") for p in scope["query_string"].decode().split("&") if p)
        status, parts = int(query.get("status", "200")), int(query.get("parts", "1"))
        body = b"" if status in (204, 304) else b"part," * parts
        shaped = [(b"content-type", b"text/plain")]
        if query.get("length") != "none":
            shaped.append((b"content-length", b"%d" % len(body)))
        if query.get("close"):
            shaped.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": shaped})
        for i in range(parts):
            chunk = body[i * 5 : (i + 1) * 5]
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if scope["path"] == "/lane/echo":
        # The request's body, read part by part as it comes, sent back whole.
        received = b""
        while True:
            message = await receive()
            received += message.get("body", b"")
            if not message.get("more_body"):
                break
        length = (b"content-length", b"%d" % len(received))
        await send({"type": "http.response.start", "status": 200, "headers": [length]})
        await send({"type": "http.response.body", "body": received})
        return
    if scope["path"] == "/lane/mixed":
        # Header names in mixed case: written lower-case, and the app's own X-Frame-Options
        # stands in for the default one.
        mixed = [(b"X-Mixed-Case", b"1"), (b"X-Frame-Options", b"SAMEORIGIN")]
        await send({"type": "http.response.start", "status": 200, "headers": mixed})
        await send({"type": "http.response.body", "body": b"ok", "more_body": False})
        return
    if scope["path"] == "/lane/two":
        await receive()  # the request, whole; what follows waits for the disconnect

        async def poll() -> None:  # asks and gives up at once, as is_disconnected() does
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(receive(), 0.01)

        await poll()
        waited["ready"] = True
        both = await asyncio.gather(receive(), receive())
        waited["two"] = [message["type"] for message in both]
        return
    if scope["path"] == "/lane/raise":
        raise RuntimeError("an app that fails before answering")
    if scope["path"] == "/lane/silent":
        return  # an app that never answers
    if scope["path"] == "/lane/short":
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"9")]}
        )
        await send({"type": "http.response.body", "body": b"short"})
        return
    if scope["path"] == "/lane/bad-value":
        bad = [(b"x-injected", b"1\r\nset-cookie: a=b"), (b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": bad})
        await send({"type": "http.response.body", "body": b"no"})
        return
    if scope["path"] == "/lane/bad-name":
        bad = [(b"x bad", b"1"), (b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": bad})
        await send({"type": "http.response.body", "body": b"no"})
        return
    body = b'{"ok":true}'
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _hello_socket(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("hello")
    await websocket.close()


def _app() -> KeelsonApp:
    settings = KeelsonSettings(service="demo", log=LogSettings(ship_endpoint=None))
    app = create_app(settings, container=PluginContainer(settings))
    app.set_express_lane(lambda scope: scope["path"].startswith("/lane"), _lane)
    app.add_api_websocket_route("/ws", _hello_socket)
    return app


@pytest.fixture(scope="module")
def keelson_server() -> Iterator[LiveServer]:
    with LiveServer(_app()) as running:
        yield running


def _exchange(port: int, request: bytes) -> tuple[bytes, int]:
    """Send `request` on a new connection; the answer (read to the server's close) and the
    number of data segments it came in."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(request)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
        info = client.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    (segments,) = struct.unpack_from("I", info, _DATA_SEGS_IN)
    return answer, segments


def test_a_response_of_known_length_arrives_in_one_segment(keelson_server: LiveServer) -> None:
    request = b"GET /lane/small HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    answer, segments = _exchange(keelson_server.port, request)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"x-request-id: " in head and b"x-content-type-options: nosniff" in head
    assert body == b'{"ok":true}'
    assert segments == 1


def test_uvicorns_own_protocol_sends_the_head_apart() -> None:
    """What `HttpProtocol` saves: the same answer from uvicorn's protocol is two segments."""
    with LiveServer(_app(), http=HttpToolsProtocol) as stock:
        request = b"GET /lane/small HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        answer, segments = _exchange(stock.port, request)
    assert answer.endswith(b'{"ok":true}')
    assert segments == 2


def test_fastapi_routes_and_head_requests_are_whole(keelson_server: LiveServer) -> None:
    answer, segments = _exchange(
        keelson_server.port, b"GET /health/live HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"}")
    assert segments == 1
    answer, _ = _exchange(
        keelson_server.port, b"HEAD /lane/small HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 200 OK") and b"content-length: 11" in answer
    assert answer.endswith(b"\r\n\r\n")  # the head only


def test_a_streamed_response_sends_its_head_at_once(keelson_server: LiveServer) -> None:
    streamed.clear()
    with socket.create_connection(("127.0.0.1", keelson_server.port), timeout=10) as client:
        client.sendall(b"GET /lane/stream HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:  # arrives while the body does not exist yet
            chunk = client.recv(65536)
            assert chunk, "the server closed before sending the head"
            head += chunk
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert b"transfer-encoding: chunked" in head
        streamed.set()
        rest = b""
        while chunk := client.recv(65536):
            rest += chunk
    assert (head + rest).endswith(b"4\r\nlate\r\n0\r\n\r\n")


def test_pipelined_requests_are_answered_in_order(keelson_server: LiveServer) -> None:
    one = b"GET /lane/small HTTP/1.1\r\nHost: t\r\n\r\n"
    last = b"GET /health/live HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    answer, _ = _exchange(keelson_server.port, one + one + last)
    assert answer.count(b"HTTP/1.1 200 OK") == 3
    assert answer.count(b'{"ok":true}') == 2
    assert answer.index(b'{"ok":true}') < answer.index(b'"status"')


@pytest.mark.parametrize("path", ["/lane/bad-value", "/lane/bad-name"])
def test_a_header_uvicorn_would_refuse_is_never_written(
    keelson_server: LiveServer, path: str
) -> None:
    request = f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
    answer, _ = _exchange(keelson_server.port, request)
    assert answer == b""  # the connection closes without a byte of the bad head


async def test_a_client_that_left_after_a_held_head_costs_the_app_nothing(
    keelson_server: LiveServer,
) -> None:
    left.clear()
    with socket.create_connection(("127.0.0.1", keelson_server.port), timeout=10) as client:
        client.sendall(b"GET /lane/leave HTTP/1.1\r\nHost: t\r\n\r\n")
    # The app sends its body after the disconnect; uvicorn drops it, and so do we.
    assert await eventually(lambda: left.get("outcome"), timeout=10) == "sent"


async def test_the_scope_tells_an_app_that_does_not_receive_that_its_client_left(
    keelson_server: LiveServer,
) -> None:
    client_closed.clear()
    gone.clear()
    with socket.create_connection(("127.0.0.1", keelson_server.port), timeout=10) as client:
        client.sendall(b"GET /lane/gone HTTP/1.1\r\nHost: t\r\n\r\n")
        await eventually(lambda: "before" in gone, timeout=10)
    await eventually(lambda: not keelson_server.server.server_state.connections, timeout=10)
    client_closed.set()
    await eventually(lambda: "after" in gone, timeout=10)
    assert gone == {"before": False, "after": True}


def test_the_header_checks_refuse_exactly_what_uvicorns_rules_refuse() -> None:
    for byte in range(256):
        one = bytes([byte])
        assert (HEADER_RE.search(one) is None) == (byte in _NAME_BYTES), byte
        assert (HEADER_VALUE_RE.search(one) is None) == (byte in _VALUE_BYTES), byte


_SHAPES = [
    b"GET /lane/as HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /lane/as?parts=3 HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /lane/as?parts=3&length=none HTTP/1.1\r\nHost: t\r\n\r\n",
    b"HEAD /lane/as HTTP/1.1\r\nHost: t\r\n\r\n",
    b"HEAD /lane/as?length=none HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /lane/as?status=204&length=none HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /lane/as?status=304 HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /lane/as?status=404 HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /lane/as HTTP/1.0\r\nHost: t\r\n\r\n",
    b"GET /lane/as?parts=2&length=none HTTP/1.0\r\nHost: t\r\n\r\n",
    b"GET /health/live HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n",
]


_BIG = b"x" * 200_000  # past the read buffer's high-water mark: reading pauses and resumes
_REQUESTS_WITH_BODIES = [
    b"POST /lane/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /lane/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    b"POST /lane/echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
    b"POST /lane/echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (len(_BIG), _BIG),
    b"POST /lane/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
    b"GET /lane/mixed HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /lane/raise HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /lane/silent HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /lane/short HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /lane/%7Eenc%20oded?q=%20 HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET http://t/lane/as?absolute=form HTTP/1.1\r\nHost: t\r\n\r\n",
    b"NOT HTTP AT ALL\r\n\r\n",
]


def test_a_websocket_handshake_on_a_new_connection_is_upgraded(keelson_server: LiveServer) -> None:
    handshake = (
        b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", keelson_server.port), timeout=10) as client:
        client.sendall(handshake)
        answer = b""
        while b"hello" not in answer:
            chunk = client.recv(65536)
            assert chunk, answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 101 ")
    assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in answer  # RFC 6455 1.3's own example


async def test_every_receive_waiting_at_once_learns_of_the_disconnect(
    keelson_server: LiveServer,
) -> None:
    waited.clear()
    with socket.create_connection(("127.0.0.1", keelson_server.port), timeout=10) as client:
        client.sendall(b"GET /lane/two HTTP/1.1\r\nHost: t\r\n\r\n")
        await eventually(lambda: waited.get("ready"), timeout=10)
    assert await eventually(lambda: waited.get("two"), timeout=10) == ["http.disconnect"] * 2


def test_header_names_in_mixed_case_are_written_lower_case_once(
    keelson_server: LiveServer,
) -> None:
    request = b"GET /lane/mixed HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    answer, _ = _exchange(keelson_server.port, request)
    head = answer.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert b"x-mixed-case: 1" in head
    assert [line for line in head if line.lower().startswith(b"x-frame-options")] == [
        b"x-frame-options: SAMEORIGIN"
    ]


def test_request_bodies_reach_the_app_whole(keelson_server: LiveServer) -> None:
    """Sized, chunked, after 100 Continue, and large enough to pause reading."""
    bodies = [b"hello", b"hello world", b"ok", _BIG]
    for request, body in zip(_REQUESTS_WITH_BODIES[: len(bodies)], bodies, strict=True):
        close = request.replace(b"Host: t\r\n", b"Host: t\r\nConnection: close\r\n")
        answer, _ = _exchange(keelson_server.port, close)
        assert answer.endswith(b"\r\n\r\n" + body)
        assert answer.count(b"HTTP/1.1 100 Continue") == (b"Expect" in request)


def _masked(answer: bytes) -> bytes:
    """The answer without its Date lines, which may differ from one second to the next."""
    return b"\r\n".join(line for line in answer.split(b"\r\n") if not line.startswith(b"date: "))


def test_answers_are_byte_for_byte_uvicorns(keelson_server: LiveServer) -> None:
    """Every shape of answer, keep-alive and closing, pipelined three at a time, is what
    uvicorn's own protocol sends: a guard against drifting from it on an upgrade."""
    requests = [
        *_SHAPES,
        *_REQUESTS_WITH_BODIES,
        b"GET /lane/as?close=1 HTTP/1.1\r\nHost: t\r\n\r\n",  # the app closes it
    ]
    last = b"GET /lane/as HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    with LiveServer(_app(), http=HttpToolsProtocol) as stock:
        for shape in requests:
            # One request id for all, so that problem bodies and headers compare too.
            sent = (shape + shape + last).replace(b"Host: t\r\n", b"Host: t\r\nX-Request-ID: s\r\n")
            ours, _ = _exchange(keelson_server.port, sent)
            theirs, _ = _exchange(stock.port, sent)
            assert ours.startswith(b"HTTP/1.")
            assert _masked(ours) == _masked(theirs), shape[:80]


def _answer(client: socket.socket) -> bytes:
    """One answer with a Content-Length, read off a kept-alive connection."""

    def more() -> bytes:
        chunk = client.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        return chunk

    data = b""
    while b"\r\n\r\n" not in data:
        data += more()
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += more()
    return body


def test_an_idle_kept_alive_connection_is_closed_after_the_timeout() -> None:
    request = b"GET /lane/small HTTP/1.1\r\nHost: t\r\n\r\n"
    with (
        LiveServer(_app(), keep_alive_seconds=2) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as client,
    ):
        # Busy for one and a half timeouts, a request every 0.1 s: the connection stays.
        for _ in range(30):
            client.sendall(request)
            assert _answer(client) == b'{"ok":true}'
            time.sleep(0.1)  # the client's pace, not a wait for the server
        answered = time.monotonic()
        client.sendall(request)
        assert _answer(client) == b'{"ok":true}'
        # Then idle: the server closes it once the timeout has passed since the last answer,
        # not a whole timeout later (bounds wide enough for a loaded machine).
        assert client.recv(65536) == b""
        assert 1.5 <= time.monotonic() - answered < 3.5


async def _plain(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


def test_requests_leave_no_cyclic_garbage() -> None:
    """A request's scope and cycle are freed when it ends, not left to the collector (the
    gateway runs it rarely): nothing in the scope may point back at the cycle."""
    requests = 200
    with LiveServer(_plain) as server:
        gc.collect()
        gc.disable()
        try:
            for _ in range(requests):
                request = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
                assert _exchange(server.port, request)[0].endswith(b"ok")
            state = server.server.server_state
            asyncio.run(eventually(lambda: not state.tasks, timeout=10))
            found = gc.collect()
        finally:
            gc.enable()
    assert found < requests // 4, f"{found} objects were left to the garbage collector"

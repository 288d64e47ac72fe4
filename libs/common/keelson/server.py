"""uvicorn's httptools protocol with a lean request cycle, head and body in one write.

Under a proxy's load, uvicorn's own per-request work was the largest single cost left in a
gateway request: a `RequestResponseCycle` of twenty attributes, an `asyncio.Event` for every
request whether or not it reads a body, a scope built key by key, an unnamed task (Python
3.11 formats "Task-N" for each), and a chain of checks on every `send`. `HttpProtocol` keeps
uvicorn's connection handling (addresses, the parser and its 400s, WebSocket upgrades handed
to uvicorn's WebSocket protocol, graceful shutdown, write flow control) and replaces the
per-request part: the scope is a copy of a per-connection template, the cycle (`_Cycle`) is
a slotted object whose `receive()` makes a future only when it has to wait, and the task has
a fixed name. Under callgrind a hello-world request takes about 94,000 instructions here,
107,000 under uvicorn's own protocol; a gateway request about 36,000 fewer than before
(`bench/gateway_instructions.py`). The ASGI behaviour, messages and errors are uvicorn's,
which `tests/test_server.py` compares byte for byte.

A response's head and body leave in one write. uvicorn writes the status line and headers as
soon as the app sends `http.response.start`, and its body in a second write: two system
calls, and two segments on the wire, for every small answer. Here the head of a response
that has a `Content-Length` is held and sent with the first body message; a response without
one (a stream of unknown length) sends its head at once, as uvicorn does. If the client
leaves in between, what was held is dropped, as uvicorn drops writes to a closed connection.

The cycle checks a head's header names and values in one pass each over all of them, where
uvicorn runs two regular-expression searches per header; the rules (the bytes its
`HEADER_RE` and `HEADER_VALUE_RE` refuse), the framing and the errors are uvicorn's.

An app that waits on something other than `receive()` (the gateway on an upstream) learns
whether its client is still there from the scope: `scope["extensions"][CLIENT_GONE]` is a
function of no arguments that returns True once the client's connection is lost, for every
request on that connection, a pipelined one included. It is a flag read, with no task or
system call; under another server the extension is absent.

A kept-alive connection is closed after `timeout_keep_alive` seconds without a request, as
uvicorn does, but its timer is not armed after every response and cancelled by the next
request (uvloop makes and frees a handle each time): one timer per connection notes when
the connection went idle and, when it fires early, waits for the rest.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import urllib.parse
from collections.abc import Callable
from typing import Any

import httptools
from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.http.flow_control import (
    HIGH_WATER_LIMIT,
    FlowControl,
    service_unavailable,
)
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
)
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

__all__ = ["CLIENT_GONE", "HttpProtocol", "WriteCombiner", "client_gone"]

CLIENT_GONE = "keelson.client_gone"

# The bytes uvicorn's rules allow in header names and values: what `translate` deletes
# from a head's names (values) leaves only bytes the rule refuses. One pass at C speed per
# head instead of two regular-expression searches per header.
_NAME_BYTES = bytes(b for b in range(256) if not HEADER_RE.match(bytes([b])))
_VALUE_BYTES = bytes(b for b in range(256) if not HEADER_VALUE_RE.match(bytes([b])))


class WriteCombiner:
    """Stands for a connection's transport in its request cycles; between `hold()` and
    `flush()`, writes are kept and then sent as one."""

    __slots__ = ("_held", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._held: list[bytes] | None = None

    @property
    def holding(self) -> bool:
        return self._held is not None

    def hold(self) -> None:
        if self._held is None:
            self._held = []

    def flush(self) -> None:
        """Send what was held; nothing if the connection is closing (the client left)."""
        held, self._held = self._held, None
        if held and not self.transport.is_closing():
            self.transport.write(held[0] if len(held) == 1 else b"".join(held))

    def write(self, data: bytes) -> None:
        if self._held is None:
            self.transport.write(data)
        else:
            self._held.append(data)

    def close(self) -> None:
        self.flush()  # what was held goes out first, as it would have without holding
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()


def client_gone(scope: Any) -> Callable[[], bool]:
    """The scope's CLIENT_GONE function; under another server, one that always says no."""
    found: Callable[[], bool] | None = scope.get("extensions", {}).get(CLIENT_GONE)
    return found or _never


def _never() -> bool:
    return False


class _Presence:
    """Whether a connection's client is gone: `scope["extensions"][CLIENT_GONE]`.

    One per connection, shared by its requests (a pipelined one included), and holding
    nothing of theirs: a bound method of the request cycle would make the scope and the
    cycle a reference cycle, left to the garbage collector after every request.
    """

    __slots__ = ("gone",)

    def __init__(self) -> None:
        self.gone = False

    def __call__(self) -> bool:
        return self.gone


_log = logging.getLogger("uvicorn.error")
_TASK_NAME = "keelson.http"  # named: Python 3.11 formats "Task-N" for every unnamed task
_INTERIM = b"HTTP/1.1 100 Continue\r\n\r\n"


def _nothing() -> None:
    pass


class _Cycle:
    """One request and its response: uvicorn's `RequestResponseCycle`, leaner.

    `receive()` waits on a future made only when nothing is there yet; the parser's
    callbacks and the connection's loss `wake()` every such waiter (an app may wait in two
    places at once: a streaming response listening for the disconnect while its generator
    polls for it).
    """

    __slots__ = (
        "access_log",
        "body",
        "chunked_encoding",
        "default_headers",
        "disconnected",
        "expected_content_length",
        "flow",
        "keep_alive",
        "loop",
        "more_body",
        "on_response",
        "received_all",
        "response_complete",
        "response_started",
        "scope",
        "transport",
        "waiters",
        "waiting_for_100_continue",
    )

    def __init__(
        self, protocol: HttpProtocol, scope: Any, keep_alive: bool, expect_100_continue: bool
    ) -> None:
        self.scope = scope
        self.transport = protocol.combiner
        self.flow: FlowControl = protocol.flow
        self.loop = protocol.loop
        self.default_headers: list[tuple[bytes, bytes]] = protocol.server_state.default_headers
        self.access_log = protocol.access_log
        self.on_response: Callable[[], None] = protocol.on_response_complete
        self.keep_alive = keep_alive
        self.waiting_for_100_continue = expect_100_continue
        self.disconnected = False
        self.body: bytes | bytearray = b""  # a bytearray once a second part is added
        self.more_body = True
        self.received_all = False  # the last http.request went out: next comes the disconnect
        self.response_started = False
        self.response_complete = False
        self.chunked_encoding: bool | None = None
        self.expected_content_length = 0
        self.waiters: list[asyncio.Future[None]] | None = None

    def wake(self) -> None:
        """Something for `receive()`: a body part, the end of the request, the client gone."""
        waiters = self.waiters
        if waiters:
            self.waiters = None
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def add_body(self, part: bytes) -> int:
        """Keep a part of the request's body for `receive()`; returns how much is kept."""
        body = self.body
        if not body:
            self.body = part
        elif isinstance(body, bytearray):
            body += part
        else:
            self.body = bytearray(body) + part  # in place from now on, not copied each time
        return len(self.body)

    async def run_asgi(self, app: Any) -> None:
        try:
            result = await app(self.scope, self.receive, self.send)
        except BaseException as exc:
            _log.error("Exception in ASGI application\n", exc_info=exc)
            if not self.response_started:
                await self._send_500_response()
            else:
                self.transport.close()
        else:
            if result is not None:
                _log.error("ASGI callable should return None, but returned '%s'.", result)
                self.transport.close()
            elif not self.response_started and not self.disconnected:
                _log.error("ASGI callable returned without starting response.")
                await self._send_500_response()
            elif not self.response_complete and not self.disconnected:
                _log.error("ASGI callable returned without completing response.")
                self.transport.close()
        finally:
            self.on_response = _nothing  # the protocol is not kept alive by a finished cycle

    async def _send_500_response(self) -> None:
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"21"),
            (b"connection", b"close"),
        ]
        await self.send({"type": "http.response.start", "status": 500, "headers": headers})
        await self.send({"type": "http.response.body", "body": b"Internal Server Error"})

    async def send(self, message: Any) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        kind = message["type"]
        if not self.response_started:
            if kind != "http.response.start":
                raise RuntimeError(
                    f"Expected ASGI message 'http.response.start', but got '{kind}'."
                )
            self._start(message)
            return
        if self.response_complete:
            raise RuntimeError(
                f"Unexpected ASGI message '{kind}' sent, after response already completed."
            )
        if kind != "http.response.body":
            raise RuntimeError(f"Expected ASGI message 'http.response.body', but got '{kind}'.")
        body = message.get("body", b"")
        more_body = message.get("more_body", False)
        transport = self.transport
        if self.scope["method"] == "HEAD":
            self.expected_content_length = 0
        elif self.chunked_encoding:
            content = [b"%x\r\n" % len(body), body, b"\r\n"] if body else []
            if not more_body:
                content.append(b"0\r\n\r\n")
            transport.write(b"".join(content))
        else:
            if len(body) > self.expected_content_length:
                raise RuntimeError("Response content longer than Content-Length")
            self.expected_content_length -= len(body)
            transport.write(body)
        if transport.holding:
            transport.flush()  # the head held for this first part, with it, in one write
        if not more_body:
            if self.expected_content_length != 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self.wake()
            if not self.keep_alive:
                transport.close()
            self.on_response()

    def _start(self, message: Any) -> None:
        """uvicorn's `http.response.start`, its headers checked in two searches."""
        self.response_started = True
        self.waiting_for_100_continue = False
        status_code = message["status"]
        headers = self.default_headers + list(message.get("headers", []))
        if self.access_log:
            logging.getLogger("uvicorn.access").info(
                '%s - "%s %s HTTP/%s" %d',
                get_client_addr(self.scope),
                self.scope["method"],
                get_path_with_query_string(self.scope),
                self.scope["http_version"],
                status_code,
            )
        names = b"".join([name for name, _ in headers])
        if names.translate(None, _NAME_BYTES):
            raise RuntimeError("Invalid HTTP header name.")
        if b"".join([value for _, value in headers]).translate(None, _VALUE_BYTES):
            raise RuntimeError("Invalid HTTP header value.")
        lower = names.islower()  # the usual case: no lower() per name
        content = [STATUS_LINE[status_code]]
        has_connection_close = False
        for raw_name, value in headers:
            name = raw_name if lower else raw_name.lower()
            if name == b"content-length" and self.chunked_encoding is None:
                self.expected_content_length = int(value.decode())
                self.chunked_encoding = False
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self.expected_content_length = 0
                self.chunked_encoding = True
            elif name == b"connection":
                connection = [token.lower().strip() for token in value.split(b",")]
                if b"close" in connection:
                    self.keep_alive = False
                    has_connection_close = True
            content += (name, b": ", value, b"\r\n")
        if not self.keep_alive and not has_connection_close:
            content.append(b"connection: close\r\n")
        if (
            self.chunked_encoding is None
            and self.scope["method"] != "HEAD"
            and status_code not in (204, 304)
        ):
            self.chunked_encoding = True
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        if self.chunked_encoding is False:
            # A body of known length is at hand: head and body leave in one write.
            self.transport.hold()
        self.transport.write(b"".join(content))

    async def receive(self) -> Any:
        if self.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(_INTERIM)
            self.waiting_for_100_continue = False
        if not self.disconnected and not self.response_complete:
            self.flow.resume_reading()
            if self.received_all or (self.more_body and not self.body):
                waiter: asyncio.Future[None] = self.loop.create_future()
                if self.waiters is None:
                    self.waiters = [waiter]
                else:
                    self.waiters.append(waiter)
                try:
                    await waiter
                finally:
                    if waiter.cancelled() and self.waiters and waiter in self.waiters:
                        self.waiters.remove(waiter)  # a poll that gave up leaves nothing
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        message = {"type": "http.request", "body": bytes(self.body), "more_body": self.more_body}
        self.body = b""
        self.received_all = not self.more_body
        return message


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's `HttpToolsProtocol` whose requests run as `_Cycle`s (see the module)."""

    combiner: WriteCombiner
    cycle: _Cycle | None  # type: ignore[assignment]
    pipeline: Any
    _idle_since: float | None = None  # when the last response completed; None: busy

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.combiner = WriteCombiner(transport)
        self.presence = _Presence()
        # What every request's scope starts from; the rest is set per request.
        self._scope_base: dict[str, Any] = {
            "type": "http",
            "http_version": "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "root_path": self.root_path,
        }

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        if self.logger.level <= TRACE_LOG_LEVEL:
            prefix = f"{self.client[0]}:{self.client[1]} - " if self.client else ""
            self.logger.log(TRACE_LOG_LEVEL, "%sHTTP connection lost", prefix)
        cycle = self.cycle
        if cycle is not None:
            if not cycle.response_complete:
                cycle.disconnected = True
            cycle.wake()
        if self.flow is not None:
            self.flow.resume_writing()
        if exc is None:
            self.transport.close()
        self.parser = None  # type: ignore[assignment]
        self.presence.gone = True
        self._idle_since = None
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None

    def _unset_keepalive_if_required(self) -> None:
        """A request's bytes came (or the connection was lost): not idle, as an armed timer
        will find when it fires."""
        self._idle_since = None

    def on_message_begin(self) -> None:
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        scope = self._scope_base.copy()
        scope["asgi"] = {"version": self.asgi_version, "spec_version": "2.3"}
        scope["headers"] = self.headers
        scope["state"] = self.app_state.copy()
        # ASGI's types have every extension a dict of details; this one is a function.
        scope["extensions"] = {CLIENT_GONE: self.presence}
        self.scope = scope  # type: ignore[assignment]

    def on_headers_complete(self) -> None:
        parser = self.parser
        scope: Any = self.scope
        http_version = parser.get_http_version()
        scope["method"] = parser.get_method().decode("ascii")
        if http_version != "1.1":
            scope["http_version"] = http_version
        if parser.should_upgrade() and self._should_upgrade():
            return
        url = httptools.parse_url(self.url)
        raw_path = url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        if self.root_path:
            scope["path"] = self.root_path + path
            scope["raw_path"] = self.root_path.encode("ascii") + raw_path
        else:
            scope["path"] = path
            scope["raw_path"] = raw_path
        scope["query_string"] = url.query or b""
        limit = self.limit_concurrency
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            app: Any = service_unavailable
            self.logger.warning("Exceeded concurrency limit.")
        else:
            app = self.app
        existing = self.cycle
        keep_alive = http_version != "1.0" and parser.should_keep_alive()
        self.cycle = _Cycle(self, scope, keep_alive, self.expect_100_continue)
        if existing is None or existing.response_complete:
            self._start_asgi_task(self.cycle, app)
        else:
            # Pipelined: it starts when the response before it is complete.
            self.flow.pause_reading()
            self.pipeline.appendleft((self.cycle, app))

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        context = contextvars.Context() if self.config.reset_contextvars else None
        task = self.loop.create_task(cycle.run_asgi(app), name=_TASK_NAME, context=context)
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def on_body(self, body: bytes) -> None:
        if self.parser.should_upgrade() and self._should_upgrade():
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            return
        if cycle.add_body(body) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.wake()

    def on_message_complete(self) -> None:
        if self.parser.should_upgrade() and self._should_upgrade():
            return  # a WebSocket handshake: the upgrade takes the connection over
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            return
        cycle.more_body = False
        cycle.wake()

    def on_response_complete(self) -> None:
        """uvicorn's, with the keep-alive timer armed only if none is."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self._keep_alive_expired
            )

    def _keep_alive_expired(self) -> None:
        self.timeout_keep_alive_task = None
        if self._idle_since is None:
            return  # busy: the response's completion arms it again
        left = self._idle_since + self.timeout_keep_alive - self.loop.time()
        if left > 0:
            self.timeout_keep_alive_task = self.loop.call_later(left, self._keep_alive_expired)
        else:
            self.timeout_keep_alive_handler()

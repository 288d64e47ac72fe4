"""uvicorn's httptools protocol, with a response's head and body leaving in one write.

uvicorn writes a response's status line and headers as soon as the app sends
`http.response.start`, and its body in a second write: two system calls, and two
segments on the wire, for every small answer. `HttpProtocol`'s request cycle holds the
head of a response that has a `Content-Length` and sends it with the first body message,
in one write; a response without one (a stream of unknown length) sends its head at once,
as uvicorn does. If the client leaves in between, what was held is dropped, as uvicorn
drops writes to a closed connection.

The cycle also checks a head's header names and values in one pass each over all of
them, where uvicorn runs two regular-expression searches per header; the rules (the bytes
its `HEADER_RE` and `HEADER_VALUE_RE` refuse), the framing and the errors are uvicorn's.

An app that waits on something other than `receive()` (the gateway on an upstream) learns
whether its client is still there from the scope: `scope["extensions"][CLIENT_GONE]` is a
function of no arguments that returns True once the client's connection is lost, for every
request on that connection, a pipelined one included. It is a flag read, with no task or
system call; under another server the extension is absent.

A kept-alive connection is closed after `timeout_keep_alive` seconds without a request, as
uvicorn does, but its timer is not armed after every response and cancelled by the next
request (uvloop makes and frees a handle each time): one timer per connection notes when
the connection went idle and, when it fires early, waits for the rest.

Everything else is uvicorn's own code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
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


class _Cycle(RequestResponseCycle):
    """uvicorn's request cycle, writing through a `WriteCombiner` (see the module)."""

    transport: WriteCombiner  # type: ignore[assignment]

    async def send(self, message: Any) -> None:
        if (
            message["type"] == "http.response.start"
            and not self.response_started
            and not self.flow.write_paused
            and not self.disconnected
        ):
            self._start(message)
            return
        await super().send(message)
        if self.transport.holding and message["type"] == "http.response.body":
            self.transport.flush()

    def _start(self, message: Any) -> None:
        """uvicorn's `http.response.start`, its headers checked in two searches."""
        self.response_started = True
        self.waiting_for_100_continue = False
        status_code = message["status"]
        headers = self.default_headers + list(message.get("headers", []))
        if self.access_log:
            self.access_logger.info(
                '%s - "%s %s HTTP/%s" %d',
                get_client_addr(self.scope),
                self.scope["method"],
                get_path_with_query_string(self.scope),
                self.scope["http_version"],
                status_code,
            )
        if b"".join([name for name, _ in headers]).translate(None, _NAME_BYTES):
            raise RuntimeError("Invalid HTTP header name.")
        if b"".join([value for _, value in headers]).translate(None, _VALUE_BYTES):
            raise RuntimeError("Invalid HTTP header value.")
        content = [STATUS_LINE[status_code]]
        has_connection_close = False
        for raw_name, value in headers:
            name = raw_name.lower()
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


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's `HttpToolsProtocol` whose request cycles are `_Cycle`s."""

    combiner: WriteCombiner
    _idle_since: float | None = None  # when the last response completed; None: busy

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.combiner = WriteCombiner(transport)
        self.presence = _Presence()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.presence.gone = True
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None

    def _unset_keepalive_if_required(self) -> None:
        """A request's bytes came (or the connection was lost): not idle, as an armed timer
        will find when it fires."""
        self._idle_since = None

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

    def on_headers_complete(self) -> None:
        scope = self.scope
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is scope:  # not an upgrade to WebSocket
            cycle.__class__ = _Cycle
            cycle.transport = self.combiner  # type: ignore[assignment]
            # ASGI's types have every extension a dict of details; this one is a function.
            scope.setdefault("extensions", {})[CLIENT_GONE] = self.presence  # type: ignore[assignment]

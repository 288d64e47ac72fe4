"""Keep-alive HTTP/1.1 connections to one upstream: an `asyncio.Protocol` of ours whose
answers `httptools.HttpResponseParser` (the parser uvicorn uses) reads.

The request head is written from the header lines the proxy already holds as bytes: one
join and one write with the body, checked against CR/LF injection by counting line breaks.
A general client (aiohttp's `ClientSession`) builds request and response objects, a cookie
jar and tracing hooks per request, which cost more CPU than the exchange itself
(`bench/upstream_hop.py`). The gateway's control-plane calls (readiness, OpenAPI documents)
still go through a `ClientSession`.

Each connection notes the time of its last read instead of arming a timer per read; one
watchdog per pool looks at the connections with an answer outstanding several times per
timeout: a silent upstream times out between `read_timeout` and an eighth more. A
connection whose reader is behind (flow control paused it) is not timed out: the silence
is the reader's.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable
from typing import cast

import httptools
from yarl import URL

from gateway.transport import (
    IDEMPOTENT,
    Body,
    ConnectTimeout,
    Headers,
    InvalidAnswer,
    ReadTimeout,
    RequestBodyStalled,
    UpstreamDisconnected,
    UpstreamUnreachable,
)

__all__ = ["PooledResponse", "UpstreamPool"]

# A body up to asyncio's write-buffer high-water mark (64 KiB) cannot pause the transport
# behind a socket emptied by the previous exchange, so its write never waits for the upstream
# to read (the read timeout covers the rest): only a larger one pays for a timeout.
_UNBOUNDED_BODY_BYTES = 64 * 1024
# An answer's body buffered unread past this pauses reading from the upstream.
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024
# Methods whose empty body goes without a Content-Length (RFC 9110 8.6: a user agent
# should not send one when the method defines no meaning for a body).
_NO_BODY = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})
_NO_CONTENT = frozenset({204, 304})
_MAX_FIELD_BYTES = 8190
_MAX_HEAD_BYTES = 32768


class _NotSent(UpstreamDisconnected):
    """The connection was closed before the request went out: it may go on another."""


class PooledResponse:
    """An upstream's answer on a pooled connection (`gateway.transport.UpstreamResponse`).

    `release()` puts a connection whose answer was read to its end back in the pool, and
    closes any other.
    """

    __slots__ = (
        "_chunks",
        "_connection",
        "_exc",
        "_pool",
        "_size",
        "_waiter",
        "content_length",
        "eof",
        "raw_headers",
        "status",
        "until_eof",
    )

    def __init__(
        self,
        connection: _Connection,
        status: int,
        raw_headers: list[tuple[bytes, bytes]],
        content_length: int | None,
        until_eof: bool,
    ) -> None:
        self._connection: _Connection | None = connection
        self._pool: UpstreamPool | None = None
        self.status = status
        self.raw_headers = raw_headers
        self.content_length = content_length
        self.until_eof = until_eof  # no length, no chunks: the body ends when the upstream closes
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self.eof = False
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    # Fed by the connection.
    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > _HIGH_WATER and self._connection is not None:
            self._connection.pause()
        if self._waiter is not None:  # the usual small answer comes before anyone waits
            self._wake()

    def finish(self) -> None:
        self.eof = True
        if self._waiter is not None:
            self._wake()

    def fail(self, exc: BaseException) -> None:
        if not self.eof and self._exc is None:
            self._exc = exc
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # Read by the proxy.
    def read_now(self) -> bytes | None:
        if not self.eof:
            return None
        return self._take()

    async def read(self) -> bytes:
        while not self.eof:
            await self._wait()
        return self._take()

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        while True:
            if self._chunks:
                yield self._take()
            elif self.eof:
                return
            else:
                await self._wait()

    def _take(self) -> bytes:
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        connection = self._connection
        if connection is not None and connection.paused:
            connection.resume()
        return data

    async def _wait(self) -> None:
        if self._exc is not None:
            raise self._exc
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self._exc is not None and not self._chunks:
            raise self._exc

    def release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None or self._pool is None:
            return
        self._pool.put_back(connection, reusable=self.eof and not connection.should_close)


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: writes go straight to its transport, answers through
    httptools' parser into a `PooledResponse`."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.clock = loop.time
        self.last_read = self.clock()
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.head: asyncio.Future[PooledResponse] | None = None  # until the answer's head
        self.response: PooledResponse | None = None  # the answer being read
        self.head_only = False  # a HEAD: the answer ends with its head
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.should_close = False
        self.lost = False
        self.paused = False  # by flow control: the reader is behind, not the upstream
        self.write_paused = False
        self.drained: asyncio.Future[None] | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.last_read = self.clock()
        parser = self.parser
        if parser is None or self.head is None:
            # Bytes nobody asked for (after a HEAD's answer, or on an idle connection): what
            # comes next on this connection cannot be trusted.
            self.close()
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            # The upstream's bytes (which the parser's message may quote) stay out of it.
            self.fail(InvalidAnswer(f"an answer that cannot be parsed ({type(exc).__name__})"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.should_close = True
        response = self.response
        if response is not None and response.until_eof and not response.eof:
            response.finish()  # its end is the close
            self.response = None
        self.fail(UpstreamDisconnected("the upstream closed the connection"))
        drained = self.drained
        if drained is not None and not drained.done():
            drained.set_exception(UpstreamDisconnected("connection lost while sending"))

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        drained = self.drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    # httptools.HttpResponseParser callbacks (no on_message_begin: `start` and the end of
    # each head begin the next one, which spares a call from the parser per answer)
    def on_header(self, name: bytes, value: bytes) -> None:
        # httptools sets no bound of its own: these are aiohttp's (a line, the whole head).
        size = len(name) + len(value)
        self.head_bytes += size
        if size > _MAX_FIELD_BYTES or self.head_bytes > _MAX_HEAD_BYTES:
            raise InvalidAnswer("an answer's header too large")
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        assert parser is not None
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.headers = []  # an interim answer (100 Continue): the real one follows
            self.head_bytes = 0
            return
        length = chunked = None
        for name, value in self.headers:  # names lower-cased as they came (`on_header`)
            if name == b"content-length":
                length = int(value) if value.isdigit() else None
            elif name == b"transfer-encoding":
                chunked = True
        no_body = self.head_only or status in _NO_CONTENT
        until_eof = not (no_body or chunked or length is not None)
        self.should_close = not parser.should_keep_alive() or until_eof
        response = PooledResponse(self, status, self.headers, length, until_eof)
        # The answer keeps this list: whatever the parser reads next (an answer nobody asked
        # for, in the same read) must not add to the headers the proxy is about to relay.
        self.headers = []
        self.head_bytes = 0
        if no_body:
            response.finish()
            if self.head_only:
                # httptools cannot be told an answer has no body: the next exchange on this
                # connection gets a fresh parser (`start`).
                self.parser = None
        else:
            self.response = response
        head = self.head
        if head is not None and not head.done():
            head.set_result(response)

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response.feed(body)

    def on_message_complete(self) -> None:
        response = self.response
        if response is not None:
            self.response = None
            response.finish()

    # Used by the pool.
    def start(self, head_only: bool) -> asyncio.Future[PooledResponse]:
        """Ready for the next answer: a future for its head."""
        if self.parser is None or head_only:
            self.parser = httptools.HttpResponseParser(self)
        self.head_only = head_only
        self.headers = []
        self.head_bytes = 0
        self.head = self.loop.create_future()
        self.last_read = self.clock()
        return self.head

    def fail(self, exc: BaseException) -> None:
        """End the exchange under way with `exc` (its head, or its body once that came)."""
        self.should_close = True
        head = self.head
        if head is not None and not head.done():
            head.set_exception(exc)
        response = self.response
        if response is not None:
            self.response = None
            response.fail(exc)

    async def drain(self) -> None:
        if self.lost:
            raise UpstreamDisconnected("connection lost while sending")
        if self.write_paused:
            self.drained = self.loop.create_future()
            try:
                await self.drained
            finally:
                self.drained = None

    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None:
            self.paused = False
            self.last_read = self.clock()  # the silence while paused was the reader's
            self.transport.resume_reading()

    def close(self) -> None:
        self.should_close = True
        if self.transport is not None:
            self.transport.close()

    def is_connected(self) -> bool:
        return not self.lost and self.transport is not None and not self.transport.is_closing()


class UpstreamPool:
    """Connections to the upstream at `url`: at most `limit` open, idle ones kept for reuse.

    An idle connection is used again only while younger than `keepalive_seconds` (kept below
    the upstream's own keep-alive timeout, so the upstream rarely closes one under a request).
    A request waits at most `connect_timeout` for its connection (`ConnectTimeout`), and
    `read_timeout` (up to an eighth more: the watchdog's round, see the module) between two
    reads of the answer (`ReadTimeout`), and `read_timeout` for each write of a request
    body (`TimeoutError`). The other failures are in `gateway.transport`.
    """

    def __init__(
        self,
        url: str,
        *,
        limit: int,
        keepalive_seconds: float,
        connect_timeout: float,
        read_timeout: float,
    ) -> None:
        parsed = URL(url)
        if parsed.scheme != "http" or parsed.host is None:
            raise ValueError(f"upstream URL must be http://host[:port]: {url}")
        self.host = parsed.host
        self.port = parsed.port or 80
        self.authority = parsed.raw_authority
        self._host_line = f"host: {self.authority}\r\n".encode("latin-1")
        self.keepalive_seconds = keepalive_seconds
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.limit = limit
        self._free = limit  # slots under the limit; a request takes one until released
        self._slot_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._idle: collections.deque[tuple[float, _Connection]] = collections.deque()
        self._closed = False
        # Connections with an answer outstanding, and its body once its head has come.
        self._busy: dict[_Connection, PooledResponse | None] = {}
        self._watchdog: asyncio.TimerHandle | None = None

    @property
    def free_slots(self) -> int:
        """Slots no request holds now."""
        return self._free

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot."""
        return sum(not waiter.done() for waiter in self._slot_waiters)

    @property
    def idle(self) -> int:
        """Kept connections waiting for a request, still open."""
        return sum(connection.is_connected() for _, connection in self._idle)

    async def request(
        self,
        method: str,
        target: bytes,
        headers: Headers,
        body: Body = None,
        *,
        length: int | None = None,
    ) -> PooledResponse:
        """Send one request and read its head (see `gateway.transport.UpstreamTransport`).

        The body's framing is the pool's: `Content-Length` for a `bytes` body (unless empty
        on a method that has none), for a streamed one when `length` is given, else
        `Transfer-Encoding: chunked`.

        An idle connection may have been closed by the upstream meanwhile. If it fails
        before any answer, the request goes once more on a new connection when its body can
        be sent again and either nothing was sent or the method is idempotent: a close that
        crossed the request on the wire is not the upstream's answer.
        """
        chunked = length is None and not (body is None or isinstance(body, bytes))
        head = self._head(method, target, headers, body, length, chunked)
        # The usual case needs no wait: a free slot and an idle connection, taken at once.
        if self._free and not self._slot_waiters:
            self._free -= 1
        else:
            await self._wait_for_slot()
        connection = None
        try:
            connection = self._idle_connection()
            reused = connection is not None
            if connection is None:
                connection = await self._new_connection()
            try:
                response = await self._exchange(connection, method, head, body, chunked)
            except UpstreamDisconnected as exc:
                if isinstance(exc, _NotSent) and not reused:
                    # A new connection closed before the request went out: as good as refused.
                    raise UpstreamUnreachable(str(exc)) from exc
                if not (reused and isinstance(body, bytes | None)):
                    raise
                if not isinstance(exc, _NotSent) and method not in IDEMPOTENT:
                    raise
                self._discard(connection)
                connection = await self._new_connection()
                try:
                    response = await self._exchange(connection, method, head, body, chunked)
                except _NotSent as again:
                    raise UpstreamUnreachable(str(again)) from again
        except BaseException:
            if connection is not None:
                self._discard(connection)
            self._release_slot()
            raise
        self._busy[connection] = response
        response._pool = self
        return response

    async def _wait_for_slot(self) -> None:
        """A slot under the limit, waited for no longer than a connection would be."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        try:
            async with asyncio.timeout(self.connect_timeout):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self._release_slot()  # handed a slot as it gave up: pass it on
            else:
                # No dead entries left behind (a release may have dropped it already).
                with contextlib.suppress(ValueError):
                    self._slot_waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise ConnectTimeout(
                    f"no free connection to {self.authority} in {self.connect_timeout}s"
                ) from None
            raise

    def _release_slot(self) -> None:
        """The slot goes to the longest waiter still waiting, else back to the free count."""
        waiters = self._slot_waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1

    def _exchange(
        self, connection: _Connection, method: str, head: bytes, body: Body, chunked: bool
    ) -> Awaitable[PooledResponse]:
        """Send the request on `connection`; what it returns gives the answer's head.

        A plain function, not a coroutine, for the usual small request: written at once,
        its answer is the connection's future itself, with no frame of ours around it.
        """
        transport = connection.transport
        if transport is None or connection.lost or transport.is_closing():
            # Nothing was sent: the caller may send again on another connection.
            raise _NotSent("the connection was closed before the request")
        answer = connection.start(head_only=method == "HEAD")
        if body is None or (isinstance(body, bytes) and len(body) <= _UNBOUNDED_BODY_BYTES):
            transport.write(head + body if body else head)  # cannot pause: no wait
            self._watch(connection)  # `start` has just set its clock
            return answer
        return self._send_then_answer(connection, transport, head, body, chunked, answer)

    async def _send_then_answer(
        self,
        connection: _Connection,
        transport: asyncio.Transport,
        head: bytes,
        body: Body,
        chunked: bool,
        answer: asyncio.Future[PooledResponse],
    ) -> PooledResponse:
        try:
            await self._send(connection, transport, head, body, chunked)
        except BaseException:
            if answer.done() and not answer.cancelled():
                answer.exception()  # the send's failure is the one that counts
            answer.cancel()
            raise
        connection.last_read = connection.clock()  # the read timeout starts once it is sent
        self._watch(connection)
        return await answer

    def _watch(self, connection: _Connection) -> None:
        """Time `connection`'s answer out once it has been silent for `read_timeout`."""
        self._busy[connection] = None
        if self._watchdog is None:
            self._arm_watchdog()

    def _arm_watchdog(self) -> None:
        loop = asyncio.get_running_loop()
        self._watchdog = loop.call_later(self.read_timeout / 8, self._sweep)

    def _sweep(self) -> None:
        """The watchdog's round: fail the answers silent for `read_timeout`."""
        self._watchdog = None
        busy = self._busy
        if not busy:
            return
        now = asyncio.get_running_loop().time()
        for connection, response in list(busy.items()):
            if connection.paused or (response is not None and response.eof):
                continue
            if now - connection.last_read >= self.read_timeout:
                connection.fail(ReadTimeout(f"no answer from {self.authority} in time"))
                connection.close()  # and it will not be pooled
                del busy[connection]
        if busy:
            self._arm_watchdog()

    def _discard(self, connection: _Connection) -> None:
        self._busy.pop(connection, None)
        connection.close()

    def put_back(self, connection: _Connection, *, reusable: bool) -> None:
        self._busy.pop(connection, None)
        # One closing meanwhile is found, and closed, when `_idle_connection` looks at it.
        if reusable and not self._closed:
            connection.head = None
            self._idle.append((time.monotonic(), connection))
        else:
            connection.fail(UpstreamDisconnected("the answer was left unread"))
            connection.close()
        if self._slot_waiters:
            self._release_slot()
        else:  # nobody waits: the usual case, without a call
            self._free += 1

    async def close(self) -> None:
        self._closed = True  # the watchdog stays while answers are outstanding, then stops
        while self._idle:
            self._idle.pop()[1].close()

    def _idle_connection(self) -> _Connection | None:
        """The most recent idle connection still young and open (the likeliest to be
        alive), closing those that are not; None when there is none."""
        idle = self._idle
        oldest = time.monotonic() - self.keepalive_seconds
        while idle:
            since, connection = idle.pop()
            if since > oldest and connection.is_connected():
                return connection
            connection.close()
        return None

    async def _new_connection(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop), self.host, self.port
                )
        except TimeoutError:  # before OSError, of which it is a subclass
            raise ConnectTimeout(
                f"no connection to {self.authority} in {self.connect_timeout}s"
            ) from None
        except OSError as exc:
            raise UpstreamUnreachable(
                f"no connection to {self.authority}: {exc.strerror or type(exc).__name__}"
            ) from exc
        return connection

    def _head(
        self,
        method: str,
        target: bytes,
        headers: Headers,
        body: Body,
        length: int | None,
        chunked: bool,
    ) -> bytes:
        """The request line and headers, framing included, ending in the blank line."""
        verb = method.encode("latin-1")
        # `name: value` lines joined in C, with no loop of ours.
        lines = list(map(b": ".join, headers))
        # A line break inside the target or a header would let it add headers (or a request)
        # of its own. `find` is memchr; `in` on bytes would first try the operand as an
        # integer, and build and drop a TypeError (some 1,700 instructions) each time.
        probe = b"".join([verb, target, *lines])
        if probe.find(b"\r") != -1 or probe.find(b"\n") != -1:
            raise ValueError("a line break inside the request line or a header")
        parts = [verb, b" ", target, b" HTTP/1.1\r\n", self._host_line]
        if lines:
            lines.append(b"")  # the last header's line ends too
            parts.append(b"\r\n".join(lines))
        if isinstance(body, bytes):
            if body or method not in _NO_BODY:
                parts += (b"content-length: ", b"%d" % len(body), b"\r\n")
        elif chunked:
            parts.append(b"transfer-encoding: chunked\r\n")
        elif body is not None and length is not None:
            parts += (b"content-length: ", b"%d" % length, b"\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    async def _send(
        self,
        connection: _Connection,
        transport: asyncio.Transport,
        head: bytes,
        body: Body,
        chunked: bool,
    ) -> None:
        """A body that can pause the transport: sent with waits, none longer than a read."""
        if isinstance(body, bytes):
            transport.write(head + body)
            # Enough to pause the transport: wait for the upstream to take it.
            async with asyncio.timeout(self.read_timeout):
                await connection.drain()
            return
        assert body is not None
        transport.write(head)
        # A client that stops sending would hold the slot and the connection, and an upstream
        # that stops reading would hold a write once the socket's buffers fill: each wait, for
        # the next part and for its write, is no longer than a read's.
        parts = aiter(body)
        while True:
            try:
                async with asyncio.timeout(self.read_timeout):
                    chunk = await anext(parts)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise RequestBodyStalled(
                    f"no part of the request body in {self.read_timeout}s"
                ) from None
            if not chunk:
                continue
            if connection.lost:
                raise UpstreamDisconnected("connection lost while sending")
            transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
            async with asyncio.timeout(self.read_timeout):
                await connection.drain()
        if chunked:
            transport.write(b"0\r\n\r\n")

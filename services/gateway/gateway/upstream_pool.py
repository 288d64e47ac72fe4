"""Keep-alive HTTP/1.1 connections to one upstream, driven by aiohttp's client protocol.

aiohttp reads the answers here as it does inside `ClientSession`: `ResponseHandler` is its
client protocol (the C response parser, flow control), and its `StreamWriter`
frames streamed bodies. The request head is written here, from the header lines the proxy
already holds as bytes: one join and one write with the body, checked against CR/LF
injection by counting line breaks, where `StreamWriter.write_headers` would take them as
text, build a multidict and check each character. What is left out of `ClientSession` is its
per-request machinery: the `ClientRequest` and `ClientResponse` objects, the cookie jar,
redirects and tracing hooks, which cost more CPU than the exchange itself
(`bench/upstream_hop.py`). The gateway's control-plane calls (readiness, OpenAPI documents)
still go through its `ClientSession`.

Two per-request costs of `ResponseHandler` are left out as well. Its read timeout arms a
timer when the request is sent and again on every read (uvloop makes and frees a handle
each time, some microseconds apiece); here each connection notes the time of its last read
and one watchdog per pool looks at the connections with an answer outstanding, several
times per timeout: a silent upstream times out between `read_timeout` and an eighth more.
And aiohttp builds a new response parser for every request; here a kept connection keeps
its parser, which is ready for the next answer once the last was read to its end.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Sequence

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.http import RawResponseMessage, StreamWriter
from multidict import CIMultiDictProxy
from yarl import URL

__all__ = ["IDEMPOTENT", "RequestBodyStalled", "UpstreamPool", "UpstreamResponse"]

Body = bytes | AsyncIterator[bytes] | None
Headers = Sequence[tuple[bytes, bytes]]
# Methods a repeat leaves as one would (RFC 9110 9.2.2): safe to send again after a failure.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
# A body up to asyncio's write-buffer high-water mark (64 KiB) cannot pause the transport
# behind a socket emptied by the previous exchange, so its write never waits for the upstream
# to read (the read timeout covers the rest): only a larger one pays for a timeout.
_UNBOUNDED_BODY_BYTES = 64 * 1024
# Methods whose empty body goes without a Content-Length (RFC 9110 8.6: a user agent
# should not send one when the method defines no meaning for a body).
_NO_BODY = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})
_TIMEOUT_MESSAGE = "Timeout on reading data from socket"  # aiohttp's own


class RequestBodyStalled(Exception):
    """A streamed request body's next part did not come within `read_timeout`: the client's
    silence, not the upstream's (the connection is closed, its slot freed)."""


class _Connection(ResponseHandler):
    """aiohttp's client protocol, noting when it last read instead of arming a timer."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.clock = loop.time
        self.last_read = self.clock()
        self.paused = False  # by flow control: the reader is behind, not the upstream
        self.was_paused = False  # since its parser was made (see resume_reading)
        self.skips_payload: bool | None = None  # how its parser was set up; None: not yet

    def data_received(self, data: bytes) -> None:
        self.last_read = self.clock()
        super().data_received(data)

    def pause_reading(self) -> None:
        super().pause_reading()
        self.paused = self.was_paused = True

    def resume_reading(self, resume_parser: bool = True) -> None:
        # aiohttp's StreamReader calls this after every read of a body below its low-water
        # mark, paused or not. A connection never paused has nothing held back to parse or
        # resume: skipped. Once paused (its parser may hold bytes back even after the
        # transport resumes: many small chunks unread pause it too), aiohttp's runs each time.
        if not self.was_paused:
            return
        was = self.paused
        super().resume_reading(resume_parser)
        # Parsing what was held back may have paused it again: then it is still paused.
        self.paused = self._reading_paused
        if was and not self.paused:
            self.last_read = self.clock()  # the silence while paused was the reader's


class UpstreamResponse:
    """An upstream's answer: status and headers at once, the body read by the caller.

    `release()` must follow (the proxy does it in `finally`): a connection whose answer
    was read to the end goes back to the pool, any other is closed.
    """

    __slots__ = (
        "_pool",
        "_protocol",
        "headers",
        "payload",
        "raw_headers",
        "should_close",
        "status",
    )

    def __init__(
        self,
        pool: UpstreamPool,
        protocol: _Connection,
        status: int,
        headers: CIMultiDictProxy[str],
        raw_headers: tuple[tuple[bytes, bytes], ...],
        payload: aiohttp.StreamReader,
        should_close: bool,
    ) -> None:
        self._pool = pool
        self._protocol: _Connection | None = protocol
        self.status = status
        self.headers = headers
        self.raw_headers = raw_headers
        self.payload = payload
        self.should_close = should_close

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value is not None and value.isdigit() else None

    async def read(self) -> bytes:
        return await self.payload.read()

    def read_now(self) -> bytes | None:
        """The whole body if all of it has arrived, without a wait; else None (`read`)."""
        payload = self.payload
        if payload.is_eof() and payload.exception() is None:
            return payload.read_nowait()
        return None

    def release(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is None:
            return
        reusable = not self.should_close and self.payload.is_eof() and not protocol.should_close
        self._pool.put_back(protocol, reusable=reusable)


class UpstreamPool:
    """Connections to the upstream at `url`: at most `limit` open, idle ones kept for reuse.

    An idle connection is used again only while younger than `keepalive_seconds` (kept below
    the upstream's own keep-alive timeout, so the upstream rarely closes one under a request).
    A request waits at most `connect_timeout` for its connection, and `read_timeout` (up to
    an eighth more: the watchdog's round, see the module) between two reads of the answer
    (aiohttp's `SocketTimeoutError`, a `TimeoutError`), and `read_timeout` for each write of a
    request body (a `TimeoutError` too).
    Failures are aiohttp's: `ClientOSError` when the upstream cannot be reached,
    `ServerDisconnectedError` when it closes the connection without answering, and
    `HttpProcessingError` when its answer's head cannot be parsed (its message quotes the
    upstream's bytes).
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
        self._free = limit  # slots under the limit; a request takes one until released
        self._slot_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._idle: collections.deque[tuple[float, _Connection]] = collections.deque()
        self._closed = False
        # Connections with an answer outstanding, and its body once its head has come.
        self._busy: dict[_Connection, aiohttp.StreamReader | None] = {}
        self._watchdog: asyncio.TimerHandle | None = None

    async def request(
        self,
        method: str,
        target: bytes,
        headers: Headers,
        body: Body = None,
        *,
        length: int | None = None,
    ) -> UpstreamResponse:
        """Send one request and read its head.

        `target` is the path and query, already encoded; `headers` are lower-case lines
        without the body's framing, which is the pool's: `Content-Length` for a `bytes`
        body (unless empty on a method that has none), for a streamed one when `length` is
        given, else `Transfer-Encoding: chunked`. A line break inside the target or a header
        raises `ValueError` before anything is sent.

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
        protocol = None
        try:
            protocol = self._idle_connection()
            reused = protocol is not None
            if protocol is None:
                protocol = await self._new_connection()
            try:
                message, payload = await self._exchange(protocol, method, head, body, chunked)
            except (
                aiohttp.ClientConnectionResetError,
                aiohttp.ServerDisconnectedError,
                aiohttp.ClientOSError,
            ) as exc:
                unsent = isinstance(exc, aiohttp.ClientConnectionResetError)
                if not (reused and isinstance(body, bytes | None)):
                    raise
                if not unsent and method not in IDEMPOTENT:
                    raise
                self._discard(protocol)
                protocol = await self._new_connection()
                message, payload = await self._exchange(protocol, method, head, body, chunked)
        except BaseException:
            if protocol is not None:
                self._discard(protocol)
            self._release_slot()
            raise
        return UpstreamResponse(
            self,
            protocol,
            message.code,
            message.headers,
            message.raw_headers,
            payload,
            message.should_close,
        )

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
                raise aiohttp.ConnectionTimeoutError(
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

    async def _exchange(
        self, protocol: _Connection, method: str, head: bytes, body: Body, chunked: bool
    ) -> tuple[RawResponseMessage, aiohttp.StreamReader]:
        skip_payload = method == "HEAD"
        if protocol.skips_payload is not skip_payload or protocol.was_paused:
            # A new connection, or a HEAD after a GET (or back): a parser to match. A kept
            # connection's parser read its last answer to the end and waits for the next.
            protocol.set_response_params(
                auto_decompress=False,
                skip_payload=skip_payload,
                # An answer without length or chunks ends when the upstream closes.
                read_until_eof=True,
            )
            protocol.skips_payload = skip_payload
            protocol.was_paused = False  # a new parser holds nothing back
        try:
            transport = protocol.transport
            if transport is None or transport.is_closing():
                # Nothing was sent: the caller may send again on another connection.
                raise aiohttp.ClientConnectionResetError("Cannot write to closing transport")
            if body is None or (isinstance(body, bytes) and len(body) <= _UNBOUNDED_BODY_BYTES):
                transport.write(head + body if body else head)  # cannot pause: no wait
            else:
                await self._send(protocol, transport, head, body, chunked)
        except aiohttp.ClientError:
            raise
        except ConnectionError as exc:
            # The upstream dropped the connection while taking the body (aiohttp's drain
            # raises a bare ConnectionError): a failure of the upstream's, like any other.
            raise aiohttp.ClientOSError(exc.errno or 0, "connection lost while sending") from exc
        self._watch(protocol)
        message, payload = await protocol.read()
        while 100 <= message.code < 200 and message.code != 101:
            # An interim answer (100 Continue): the real one follows, and the wait for it
            # starts again (the interim answer was a read).
            message, payload = await protocol.read()
        self._busy[protocol] = payload
        return message, payload

    def _watch(self, protocol: _Connection) -> None:
        """Time `protocol`'s answer out once it has been silent for `read_timeout`."""
        protocol.last_read = protocol.clock()
        self._busy[protocol] = None
        if self._watchdog is None:
            self._arm_watchdog()

    def _arm_watchdog(self) -> None:
        loop = asyncio.get_running_loop()
        self._watchdog = loop.call_later(self.read_timeout / 8, self._sweep)

    def _sweep(self) -> None:
        """The watchdog's round: fail the answers silent for `read_timeout`, as aiohttp's
        own timer does (the request or its body's reader gets `SocketTimeoutError`)."""
        self._watchdog = None
        busy = self._busy
        if not busy:
            return
        now = asyncio.get_running_loop().time()
        for protocol, payload in list(busy.items()):
            if protocol.paused or (payload is not None and payload.is_eof()):
                continue
            if now - protocol.last_read >= self.read_timeout:
                exc = aiohttp.SocketTimeoutError(_TIMEOUT_MESSAGE)
                protocol.set_exception(exc)  # and it will be closed, not pooled
                if payload is not None:
                    payload.set_exception(exc)
                del busy[protocol]
        if busy:
            self._arm_watchdog()

    def _discard(self, protocol: _Connection) -> None:
        self._busy.pop(protocol, None)
        protocol.close()

    def put_back(self, protocol: _Connection, *, reusable: bool) -> None:
        self._busy.pop(protocol, None)
        if reusable and not self._closed and protocol.is_connected():
            self._idle.append((time.monotonic(), protocol))
        else:
            protocol.close()
        self._release_slot()

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
            since, protocol = idle.pop()
            if since > oldest and protocol.is_connected():
                return protocol
            protocol.close()
        return None

    async def _new_connection(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(loop), self.host, self.port
                )
        except TimeoutError:  # before OSError, of which it is a subclass
            raise aiohttp.ConnectionTimeoutError(
                f"no connection to {self.authority} in {self.connect_timeout}s"
            ) from None
        except OSError as exc:
            raise aiohttp.ClientOSError(exc.errno, exc.strerror or str(exc)) from exc
        return protocol

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
        parts = [verb, b" ", target, b" HTTP/1.1\r\n", self._host_line]
        fields = [verb, target]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
            fields += (name, value)
        # A line break inside the target or a header would let it add headers (or a request)
        # of its own. `in` on bytes is memchr, faster than any per-character check.
        probe = b"".join(fields)
        if b"\r" in probe or b"\n" in probe:
            raise ValueError("a line break inside the request line or a header")
        if isinstance(body, bytes):
            if body or method not in _NO_BODY:
                parts += (b"content-length: ", b"%d" % len(body), b"\r\n")
        elif chunked:
            parts.append(b"transfer-encoding: chunked\r\n")
        elif body is not None and length is not None:
            parts += (b"content-length: ", b"%d" % length, b"\r\n")
        parts.append(b"\r\n")
        head = b"".join(parts)
        return head

    async def _send(
        self,
        protocol: _Connection,
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
                await StreamWriter(protocol, asyncio.get_running_loop()).drain()
            return
        assert body is not None
        writer = StreamWriter(protocol, asyncio.get_running_loop())
        if chunked:
            writer.enable_chunking()
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
            async with asyncio.timeout(self.read_timeout):
                await writer.write(chunk)
        async with asyncio.timeout(self.read_timeout):
            await writer.write_eof()

"""How the proxy reaches an upstream: the transport seam, its answers and its errors.

`UpstreamPool` (`gateway.upstream_pool`) speaks HTTP/1.1 over pooled TCP connections;
`ASGIUpstream` (`gateway.asgi_upstream`) drives an ASGI app in this process, for tests.

    UpstreamError
    ├── UpstreamConnectionError    nothing came back: the request may go again
    │   ├── UpstreamUnreachable    no connection could be made, or it closed before
    │   │                          any of the request went out (the proxy's 503)
    │   └── UpstreamDisconnected   the upstream closed the connection before answering
    ├── UpstreamTimeout            (a TimeoutError too)
    │   ├── ConnectTimeout         no connection (or free slot) within connect_timeout
    │   └── ReadTimeout            the answer went silent for read_timeout
    ├── InvalidAnswer              what came back is not HTTP
    └── RequestBodyStalled         the client stopped sending the body it streams
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

__all__ = [
    "IDEMPOTENT",
    "Body",
    "ConnectTimeout",
    "Headers",
    "InvalidAnswer",
    "ReadTimeout",
    "RequestBodyStalled",
    "UpstreamConnectionError",
    "UpstreamDisconnected",
    "UpstreamError",
    "UpstreamResponse",
    "UpstreamTimeout",
    "UpstreamTransport",
    "UpstreamUnreachable",
]

Body = bytes | AsyncIterator[bytes] | None
Headers = Sequence[tuple[bytes, bytes]]
# Methods a repeat leaves as one would (RFC 9110 9.2.2): safe to send again after a failure.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class UpstreamError(Exception):
    """The exchange with an upstream failed."""


class UpstreamConnectionError(UpstreamError):
    """Nothing came back from the upstream."""


class UpstreamUnreachable(UpstreamConnectionError):
    """No connection to the upstream could be made (refused, reset before the request)."""


class UpstreamDisconnected(UpstreamConnectionError):
    """The upstream closed the connection before its answer (or all of it) came."""


class UpstreamTimeout(UpstreamError, TimeoutError):
    """The upstream took too long."""


class ConnectTimeout(UpstreamTimeout):
    """No connection, or no free slot for one, within the connect timeout."""


class ReadTimeout(UpstreamTimeout):
    """The upstream's answer went silent for the read timeout."""


class InvalidAnswer(UpstreamError):
    """The upstream's bytes are not an HTTP answer (the message never quotes them)."""


class RequestBodyStalled(UpstreamError):
    """A streamed request body's next part did not come within the read timeout: the
    client's silence, not the upstream's (the connection is closed, its slot freed)."""


class UpstreamResponse(Protocol):
    """An upstream's answer: status and headers at once, the body read by the caller.

    `release()` must follow (the proxy does it in `finally`); an answer not read to its end
    ends its exchange there.
    """

    @property
    def status(self) -> int: ...
    @property
    def raw_headers(self) -> Sequence[tuple[bytes, bytes]]:
        """The answer's header lines as they came, their names lower-case."""
        ...

    @property
    def content_length(self) -> int | None: ...
    def read_now(self) -> bytes | None:
        """The whole body if all of it has arrived, without a wait; else None."""
        ...

    async def read(self) -> bytes: ...
    def iter_chunks(self) -> AsyncIterator[bytes]: ...
    def release(self) -> None: ...


class UpstreamTransport(Protocol):
    """Sends one request to one upstream and returns its answer once the head is in."""

    async def request(
        self,
        method: str,
        target: bytes,
        headers: Headers,
        body: Body = None,
        *,
        length: int | None = None,
    ) -> UpstreamResponse:
        """`target` is the path and query, already encoded; `headers` are lower-case lines
        without the body's framing; `length` is a streamed body's, when the client gave it.
        A line break inside the target or a header raises `ValueError`."""
        ...

    async def close(self) -> None: ...

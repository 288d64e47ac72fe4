"""The public port's connection limits: what a slow or oversized client is allowed.

The gateway runs on granian, whose HTTP/1 settings (hyper's) bound the request head:

- `head_timeout_seconds` is hyper's `header_read_timeout`. Its clock starts as soon as the
  connection waits for a request head, so it bounds a client that sends nothing, one that
  sends half a head, and a kept-alive connection left idle between requests alike: the
  connection is closed without an answer (hyper writes nothing; there is no request yet
  to answer). One setting covers the idle keep-alive time and the head read time, because
  the server has one.
- `max_head_bytes` is hyper's `max_buffer_size`: a head that outgrows it is answered 431
  and the connection closed as soon as the buffer is full, never buffered whole.

The body is the application's to read: `BodyReadTimeout` (below) answers 408
problem+json, and closes the connection, when a request body stalls for longer than
`body_timeout_seconds` between two chunks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keelson.errors import BadRequest, KeelsonError, RequestTimeout
from keelson.security_headers import SERVER

__all__ = ["BodyReadTimeout", "ConnectionLimits"]

# hyper refuses a read buffer smaller than 8 KiB.
_MIN_HEAD_BYTES = 8192


class ConnectionLimits(BaseModel):
    """`connections.*` of the gateway (env `KEELSON_CONNECTIONS__HEAD_TIMEOUT_SECONDS`, ...)."""

    head_timeout_seconds: float = Field(10.0, gt=0, le=3600)
    body_timeout_seconds: float = Field(30.0, gt=0, le=3600)
    max_head_bytes: int = Field(65_536, ge=_MIN_HEAD_BYTES, le=16 * 1024 * 1024)


class BodyReadTimeout:
    """ASGI middleware: a request body that stalls for `seconds` between two chunks ends
    the request with 408 problem+json (and `Connection: close`); one that granian cannot
    read (a malformed chunk) ends it with 400 problem+json (and `Connection: close`).

    The application sees either as the client's disconnect (`http.disconnect`), so it
    stops as it would for a client gone; whatever it then tries to answer is replaced by
    the problem. granian reports a body it cannot decode as `http.disconnect`, the same
    message as a client that has gone, so a disconnect before the body's last chunk is
    answered 400 too: to a client that has gone, the answer goes nowhere (granian drops
    it), and without it granian would answer its own `text/plain` 500. Requests without a
    body (no Content-Length above 0, not chunked) and messages after the body's last
    chunk pass untimed.
    """

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain function for a request without a body (most): no coroutine frame of
        # this layer's for every resumption of the request's task to pass through.
        if scope["type"] != "http" or not _has_body(scope):
            return self.app(scope, receive, send)
        return self._timed(scope, receive, send)

    async def _timed(self, scope: Scope, receive: Receive, send: Send) -> None:
        seconds = self.seconds
        reading = True
        refusal: KeelsonError | None = None  # the body's failure, once it has failed
        started = False  # the app's own answer began (before the body failed)
        replaced = False  # the problem went out instead of the app's answer

        async def timed_receive() -> Message:
            nonlocal reading, refusal
            if not reading:
                return await receive()
            if refusal is not None:
                return {"type": "http.disconnect"}
            try:
                async with asyncio.timeout(seconds):
                    message = await receive()
            except TimeoutError:
                refusal = _STALLED
                reading = False
                return {"type": "http.disconnect"}
            if message["type"] == "http.disconnect":
                refusal = _UNREADABLE
                reading = False
            elif not message.get("more_body", False):
                reading = False
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started, replaced
            if refusal is not None and not started:  # the app's answer to the "disconnect"
                if not replaced:
                    replaced = True
                    await refusal.send_to(send)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, guarded_send)
        except Exception:
            # What the app raised at the "disconnect" (Starlette's ClientDisconnect, for
            # one) is the body's doing: answered below, not a failure of the app.
            if refusal is None:
                raise
        if refusal is not None and not started and not replaced:
            await refusal.send_to(send)


# Sent past ServiceMiddleware, whose policy names the server on every other answer.
_CLOSING = {"Connection": "close", "Server": SERVER}
_STALLED = RequestTimeout("The request body stalled; the connection is closed.", headers=_CLOSING)
_UNREADABLE = BadRequest(
    "The request body could not be read; the connection is closed.", headers=_CLOSING
)


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
        if name == b"transfer-encoding":
            return True
    return False

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
import json

from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyReadTimeout", "ConnectionLimits"]

# hyper refuses a read buffer smaller than 8 KiB.
_MIN_HEAD_BYTES = 8192


class ConnectionLimits(BaseModel):
    """`connections.*` of the gateway (env `KEELSON_CONNECTIONS__HEAD_TIMEOUT_SECONDS`, ...)."""

    head_timeout_seconds: float = Field(10.0, gt=0, le=3600)
    body_timeout_seconds: float = Field(30.0, gt=0, le=3600)
    max_head_bytes: int = Field(65_536, ge=_MIN_HEAD_BYTES, le=16 * 1024 * 1024)


_PROBLEM = json.dumps(
    {
        "type": "about:blank",
        "title": "Request Timeout",
        "status": 408,
        "detail": "The request body stalled; the connection is closed.",
    }
).encode()
_HEADERS = [
    (b"content-type", b"application/problem+json"),
    (b"content-length", str(len(_PROBLEM)).encode()),
    (b"connection", b"close"),
]


class BodyReadTimeout:
    """ASGI middleware: a request body that stalls for `seconds` between two chunks ends
    the request with 408 problem+json (and `Connection: close`).

    The application sees the stall as the client's disconnect (`http.disconnect`), so it
    stops as it would for a client gone; whatever it then tries to answer is replaced by
    the 408. Requests without a body (no Content-Length above 0, not chunked) and messages
    after the body's last chunk pass untimed.
    """

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _has_body(scope):
            await self.app(scope, receive, send)
            return
        seconds = self.seconds
        reading = True
        stalled = False
        started = False  # the app's own answer began (before any stall)
        replaced = False  # the 408 went out instead of the app's answer

        async def timed_receive() -> Message:
            nonlocal reading, stalled
            if not reading:
                return await receive()
            if stalled:
                return {"type": "http.disconnect"}
            try:
                async with asyncio.timeout(seconds):
                    message = await receive()
            except TimeoutError:
                stalled = True
                reading = False
                return {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body", False):
                reading = False
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started, replaced
            if stalled and not started:  # the app's answer to the "disconnect": a 408
                if not replaced:
                    replaced = True
                    await _answer_408(send)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, guarded_send)
        except Exception:
            # What the app raised at the client's "disconnect" (Starlette's ClientDisconnect,
            # for one) is the stall's doing: answered below, not a failure of the app.
            if not stalled:
                raise
        if stalled and not started and not replaced:
            await _answer_408(send)


async def _answer_408(send: Send) -> None:
    await send({"type": "http.response.start", "status": 408, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _PROBLEM})


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
        if name == b"transfer-encoding":
            return True
    return False

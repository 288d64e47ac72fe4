"""Per-request values the pipeline's layers share through `scope["state"]`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from starlette.types import Message, Receive, Scope

__all__ = [
    "BODY",
    "CLIENT_CLOSED_REQUEST",
    "CLIENT_IP",
    "FORWARD_HEADERS",
    "PRINCIPAL",
    "ROUTE",
    "SESSION",
    "BodyTooLarge",
    "ClientGone",
    "body_chunks",
    "client_ip",
    "header",
    "read_body",
    "replay_body",
    "state",
]

BODY = "gateway.body"  # the request body, when a layer had to read it whole
CLIENT_IP = "gateway.client_ip"
FORWARD_HEADERS = "gateway.forward_headers"  # headers the gateway itself adds upstream
PRINCIPAL = "principal"
ROUTE = "gateway.route"
SESSION = "gateway.secure_session"


def state(scope: Scope) -> dict[str, Any]:
    st: dict[str, Any] = scope.setdefault("state", {})
    return st


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header `name` (lower-case) or None."""
    for key, value in scope["headers"]:
        if key == name:
            found: bytes = value
            return found
    return None


def client_ip(scope: Scope, trusted_hops: int = 0) -> str:
    """The caller's address: the socket peer, or X-Forwarded-For read back `trusted_hops`."""
    st = state(scope)
    cached: str | None = st.get(CLIENT_IP)
    if cached is not None:
        return cached
    peer = scope.get("client")
    ip = peer[0] if peer else "unknown"
    if trusted_hops:
        forwarded = header(scope, b"x-forwarded-for")
        if forwarded:
            hops = [part.strip() for part in forwarded.decode("latin-1").split(",")]
            # Each trusted proxy appended the address it saw; anything further left
            # was written by the client and cannot be believed.
            ip = hops[-trusted_hops] if len(hops) >= trusted_hops else hops[0]
    st[CLIENT_IP] = ip
    return ip


# nginx's status for a request whose client went away before the answer: the access record
# and metrics say so, where the 500 an unanswered request gets would blame the server.
CLIENT_CLOSED_REQUEST = 499


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


class BodyTooLarge(Exception):
    """The request body grew past the reader's limit."""


async def body_chunks(receive: Receive) -> AsyncIterator[bytes]:
    """The request body's chunks as they arrive; `ClientGone` on disconnect."""
    more = True
    while more:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        if chunk:
            yield chunk
        more = message.get("more_body", False)


async def read_body(receive: Receive, limit: int | None = None) -> bytes:
    """The whole request body; `BodyTooLarge` past `limit` bytes, `ClientGone` on disconnect."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in body_chunks(receive):
        size += len(chunk)
        if limit is not None and size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def replay_body(body: bytes, receive: Receive) -> Receive:
    """A `receive` that yields an already-read body once, then defers to the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay

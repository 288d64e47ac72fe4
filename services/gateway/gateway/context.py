"""The gateway's per-request context: one typed object the pipeline builds, the layers share."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from typing import TYPE_CHECKING

from starlette.types import Message, Receive, Scope

from keelson.auth import Principal
from keelson.http import Exchange

if TYPE_CHECKING:
    from gateway.openapi import RouteMatch

__all__ = [
    "CLIENT_CLOSED_REQUEST",
    "BodyTooLarge",
    "ClientGone",
    "RequestContext",
    "TrustedProxies",
    "body_chunks",
    "context",
    "find_context",
    "forwarded_client",
    "read_body",
    "replay_body",
]

_CONTEXT = "gateway.context"


@dataclass(slots=True, eq=False, init=False)
class RequestContext:
    """What the pipeline knows of one request, built once before its first layer.

    `route` is the upstream route the request is for (None: one of the gateway's own),
    `client_ip` the caller's address (the socket peer, or X-Forwarded-For read back the
    trusted hops), `forwarded_for` the X-Forwarded-For the proxy sends on. Layers fill in
    `principal` (security), `body` (a layer that had to read it whole), `session`
    (encryption) and `forward_headers` (headers the gateway itself adds upstream);
    `response` is the request's `Exchange`, where response headers and the status go.
    """

    route: RouteMatch | None
    client_ip: str
    forwarded_for: str
    response: Exchange
    principal: Principal | None
    body: bytes | None
    session: str | None
    # Shared, not copied: replaced by a layer that adds to it, never changed in place.
    forward_headers: Sequence[tuple[bytes, bytes]]

    def __init__(
        self,
        scope: Scope,
        route: RouteMatch | None,
        client_ip: str,
        forwarded_for: str,
        response: Exchange,
    ) -> None:
        """The context of the request `scope` is, attached to it (`context` finds it)."""
        self.route = route
        self.client_ip = client_ip
        self.forwarded_for = forwarded_for
        self.response = response
        self.principal = None
        self.body = None
        self.session = None
        self.forward_headers = ()
        scope[_CONTEXT] = self
        if route is not None:
            scope["route"] = route  # the route template metrics label the request with


def context(scope: Scope) -> RequestContext:
    """The request's context; only inside the pipeline."""
    found: RequestContext = scope[_CONTEXT]
    return found


def find_context(scope: Scope) -> RequestContext | None:
    """The request's context, or None for a request the pipeline has not seen."""
    found: RequestContext | None = scope.get(_CONTEXT)
    return found


def forwarded_client(scope: Scope, trusted_hops: int) -> tuple[str, str]:
    """The caller's address, and the X-Forwarded-For to send on.

    With no trusted hops the socket peer is the client and an incoming X-Forwarded-For
    is not believed; with some, each trusted proxy appended the address it saw, so the
    client is that many from the right, and anything further left was written by the
    client and cannot be believed.
    """
    peer = scope.get("client")
    ip = peer[0] if peer else "unknown"
    if not trusted_hops:
        return ip, ip
    chain = None
    for name, value in scope["headers"]:
        if name == b"x-forwarded-for":
            chain = value.decode("latin-1")
            break
    if not chain:
        return ip, ip
    hops = [part.strip() for part in chain.split(",")]
    client = hops[-trusted_hops] if len(hops) >= trusted_hops else hops[0]
    return client, f"{chain}, {ip}"


class TrustedProxies:
    """The socket peers whose X-Forwarded-For the gateway believes: those in `networks`
    (the `trusted_proxies` setting), or any peer when none are listed.

    Behind an edge with a fixed address (compose's nginx), a client that reaches the
    gateway some other way cannot choose the address its limits and records are kept under.
    """

    __slots__ = ("_networks", "_verdicts")

    # Peers are few behind a proxy; past this many the verdicts are forgotten, not grown.
    _MAX_VERDICTS = 1024

    def __init__(self, networks: Sequence[str]) -> None:
        self._networks = tuple(ip_network(network, strict=False) for network in networks)
        self._verdicts: dict[str, bool] = {}

    def believes(self, peer: str) -> bool:
        if not self._networks:
            return True
        verdict = self._verdicts.get(peer)
        if verdict is None:
            if len(self._verdicts) >= self._MAX_VERDICTS:
                self._verdicts.clear()
            try:
                address = ip_address(peer)
            except ValueError:  # "unknown": no socket peer (a Unix socket)
                verdict = False
            else:
                verdict = any(address in network for network in self._networks)
            self._verdicts[peer] = verdict
        return verdict


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

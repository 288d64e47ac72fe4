"""The reverse proxy: forwards a matched request to its upstream's transport."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Coroutine, Mapping
from random import getrandbits as _random_bits

import aiohttp
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.context import (
    CLIENT_CLOSED_REQUEST,
    ClientGone,
    RequestContext,
    body_chunks,
    context,
    read_body,
)
from gateway.metrics import (
    CIRCUIT_REJECTIONS,
    UPSTREAM_REQUEST_SECONDS,
    UPSTREAM_REQUESTS,
    UPSTREAM_RETRIES,
)
from gateway.transport import (
    IDEMPOTENT,
    InvalidAnswer,
    RequestBodyStalled,
    UpstreamConnectionError,
    UpstreamResponse,
    UpstreamTransport,
    UpstreamUnreachable,
)
from gateway.upstream_pool import UpstreamPool
from gateway.upstreams import RoutingConfig, Upstream
from keelson.errors import (
    BadGateway,
    BadRequest,
    GatewayTimeout,
    KeelsonError,
    RequestTimeout,
    ServiceUnavailable,
)
from keelson.http import random_id
from keelson.logging import request_id_var, trace_id_var
from keelson.metrics import method_label

__all__ = ["ProxyApp", "new_pools", "new_session"]

_log = logging.getLogger("gateway.proxy")

# RFC 9110 §7.6.1: meaningful for one connection only, never forwarded.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_DROP_REQUEST = _HOP_BY_HOP | {
    b"host",
    b"expect",  # met by the gateway, which reads or streams the body itself
    b"x-forwarded-for",
    b"x-forwarded-host",
    b"x-forwarded-proto",
    b"forwarded",
    b"traceparent",
    b"x-request-id",  # replaced by the id the gateway bound (the client's when valid)
    b"content-length",  # the pool frames the body it sends
}
# The gateway's server adds its own Date and X-Request-ID; second ones would be duplicates.
_DROP_RESPONSE = _HOP_BY_HOP | {b"server", b"date", b"x-request-id"}
_INTERNAL_PREFIX = b"x-keelson-"
# The usual Connection value names only Keep-Alive, hop-by-hop already: nothing to look up.
_KEEP_ALIVE = b"keep-alive"
_LOCATIONS = frozenset({b"location", b"content-location"})
_RETRY_STATUS = frozenset({502, 503})
_FAILURE_STATUS = frozenset({502, 503, 504})
# Seconds a client is told to wait when an upstream refuses connections: a restarted
# service listens again within about that, and the breaker answers for longer outages.
_UNREACHABLE_RETRY_AFTER = 1


def new_session(config: RoutingConfig) -> aiohttp.ClientSession:
    """The control plane's session (readiness probes, OpenAPI documents); it keeps no cookies."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=config.pool_limit, keepalive_timeout=config.keepalive_seconds
        ),
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None),
    )


def new_pools(
    upstreams: Mapping[str, Upstream],
    config: RoutingConfig,
    transports: Mapping[str, UpstreamTransport] | None = None,
) -> dict[str, UpstreamTransport]:
    """What proxied requests travel on: the given transport for an upstream named in
    `transports` (an in-process app, in tests), else a pool of keep-alive connections."""
    given = transports or {}
    return {
        name: given.get(name)
        or UpstreamPool(
            upstream.config.url,
            limit=config.pool_limit,
            keepalive_seconds=config.keepalive_seconds,
            connect_timeout=upstream.config.connect_timeout_seconds,
            read_timeout=upstream.config.timeout_seconds,
        )
        for name, upstream in upstreams.items()
    }


class ProxyApp:
    """Forwards requests whose path an upstream owns (the context's `route`); everything
    else goes to `fallback`."""

    def __init__(
        self,
        fallback: ASGIApp,
        *,
        pools: Mapping[str, UpstreamTransport],
        config: RoutingConfig,
    ) -> None:
        self.fallback = fallback
        self.pools = pools
        self.config = config

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain function (see GatewayPlugin.wrap) in front of the exchange's coroutine.
        if scope["type"] != "http":
            return self.fallback(scope, receive, send)
        ctx = context(scope)
        if ctx.route is None:
            return self.fallback(scope, receive, send)
        return self._proxy(ctx.route.upstream, ctx, scope, receive, send)

    async def _proxy(
        self, upstream: Upstream, ctx: RequestContext, scope: Scope, receive: Receive, send: Send
    ) -> None:
        wait = upstream.breaker.acquire()
        if wait is not None:
            CIRCUIT_REJECTIONS.labels(upstream.name).inc()
            await ServiceUnavailable(
                f"The {upstream.name} service is unavailable; try again later.",
                retry_after=max(1, math.ceil(wait)),
            ).send_to(send)
            return
        try:
            method: str = scope["method"]
            query: bytes = scope["query_string"]
            target: bytes = scope["raw_path"] + b"?" + query if query else scope["raw_path"]
            headers, declared, chunked = self._request_head(scope, ctx)
            found = self._request_body(ctx, receive, declared, chunked)
            if found is None:  # small: read whole, so that a retry can send it again
                found = (await read_body(receive), True, None)
            body, replayable, length = found
            attempts = 1 + upstream.config.retries if replayable and method in IDEMPOTENT else 1
            # Looked at once the upstream has answered: by then the body is sent, and
            # `receive` has nothing left to say but the client's disconnect.
            gone = _Disconnect(receive)
            await self._exchange(
                upstream,
                self.pools[upstream.name],
                method,
                target,
                headers,
                body,
                length,
                attempts,
                ctx,
                scope,
                send,
                gone,
            )
        except KeelsonError as failure:
            await failure.send_to(send)
        except ClientGone:
            ctx.response.status = CLIENT_CLOSED_REQUEST
        finally:
            upstream.breaker.release()

    async def _exchange(
        self,
        upstream: Upstream,
        pool: UpstreamTransport,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes | AsyncIterator[bytes] | None,
        length: int | None,
        attempts: int,
        ctx: RequestContext,
        scope: Scope,
        send: Send,
        gone: _Disconnect,
    ) -> None:
        started = time.perf_counter()
        for attempt in range(attempts):
            try:
                response = await pool.request(method, target, headers, body, length=length)
            except RequestBodyStalled:
                # The client's silence: nothing against the upstream.
                raise RequestTimeout("The request body stopped arriving.") from None
            except TimeoutError:
                upstream.breaker.record_failure()
                _requests(upstream.name, method_label(method), "timeout").inc()
                raise GatewayTimeout(
                    f"The {upstream.name} service did not answer in time."
                ) from None
            except UpstreamConnectionError as exc:
                if attempt + 1 < attempts:
                    await self._backoff(upstream, attempt)
                    continue
                upstream.breaker.record_failure()
                _log.warning("upstream %s failed: %s", upstream.name, type(exc).__name__)
                if isinstance(exc, UpstreamUnreachable):
                    # Nothing was sent: the upstream is away (killed, restarting), not wrong.
                    _requests(upstream.name, method_label(method), "unreachable").inc()
                    raise ServiceUnavailable(
                        f"The {upstream.name} service is unavailable; try again later.",
                        retry_after=_UNREACHABLE_RETRY_AFTER,
                    ) from None
                _requests(upstream.name, method_label(method), "error").inc()
                raise BadGateway(f"The {upstream.name} service closed the connection.") from None
            except InvalidAnswer as exc:
                # The request was delivered, so it is not sent again.
                upstream.breaker.record_failure()
                _requests(upstream.name, method_label(method), "error").inc()
                _log.warning(
                    "upstream %s sent an answer that cannot be parsed: %s", upstream.name, exc
                )
                raise BadGateway(f"The {upstream.name} service sent an invalid answer.") from None
            gone.armed = True  # the body is sent: a disconnect now is the client leaving
            try:
                status = response.status
                if status in _RETRY_STATUS and attempt + 1 < attempts and not gone():
                    await self._backoff(upstream, attempt)
                    continue
                _duration(upstream.name).observe(time.perf_counter() - started)
                _requests(upstream.name, method_label(method), status).inc()
                if status in _FAILURE_STATUS:
                    upstream.breaker.record_failure()
                else:
                    upstream.breaker.record_success()
                if gone():
                    # Nobody is left to read the answer: it is dropped, and `release()`
                    # closes the connection unless all of the answer has already arrived.
                    ctx.response.status = CLIENT_CLOSED_REQUEST
                    return
                await self._relay(response, ctx, scope, send, gone, upstream)
                return
            finally:
                response.release()

    async def _backoff(self, upstream: Upstream, attempt: int) -> None:
        UPSTREAM_RETRIES.labels(upstream.name).inc()
        base = upstream.config.retry_backoff_seconds * (2**attempt)
        await asyncio.sleep(base + random.uniform(0, base))

    def _request_head(
        self, scope: Scope, ctx: RequestContext
    ) -> tuple[list[tuple[bytes, bytes]], bytes | None, bool]:
        """The headers to send: the client's end-to-end ones as they came, then the
        gateway's own; and the client's body framing (its Content-Length, if any, and
        whether it is chunked), which the pool writes anew for what it sends."""
        headers: list[tuple[bytes, bytes]] = []
        host = connection = declared = None
        chunked = False
        flags = "01"
        for name, value in scope["headers"]:
            if name in _DROP_REQUEST or name.startswith(_INTERNAL_PREFIX):
                if name == b"host":
                    host = value
                elif name == b"connection":  # each one's names count (RFC 9110, 5.3)
                    connection = value if connection is None else connection + b"," + value
                elif name == b"content-length":
                    declared = value
                elif name == b"transfer-encoding":
                    chunked = True
                elif name == b"traceparent" and len(value) == 55:
                    flags = value[-2:].decode("latin-1")
                continue
            headers.append((name, value))
        if connection is not None and connection.lower() != _KEEP_ALIVE:
            # Headers the client named in Connection are hop-by-hop too.
            named = _connection_names(connection)
            headers = [h for h in headers if h[0] not in named]
        if host is not None:
            headers.append((b"x-forwarded-host", host))
        headers.append((b"x-forwarded-for", ctx.forwarded_for.encode("latin-1")))
        headers.append((b"x-forwarded-proto", scope.get("scheme", "http").encode("latin-1")))
        # W3C trace context: the same trace, with the gateway's own span as the parent.
        trace_id = trace_id_var.get() or random_id()
        traceparent = f"00-{trace_id}-{_random_bits(64).to_bytes(8).hex()}-{flags}"
        headers.append((b"traceparent", traceparent.encode("latin-1")))
        if request_id := request_id_var.get():
            headers.append((b"x-request-id", request_id.encode("latin-1")))
        if ctx.forward_headers:
            headers.extend(ctx.forward_headers)
        return headers, declared, chunked

    def _request_body(
        self, ctx: RequestContext, receive: Receive, declared: bytes | None, chunked: bool
    ) -> tuple[bytes | AsyncIterator[bytes] | None, bool, int | None] | None:
        """The body to send, whether it can be sent again (for a retry), and the length of
        a streamed one when the client gave it (`declared`); None for a body small enough
        to be read whole first (`read_body`), which is then sent again as it is."""
        buffered = ctx.body
        if buffered is not None:
            return buffered, True, None
        length: int | None = None
        if declared is not None:
            if not declared.isdigit():
                raise BadRequest("Content-Length is not a number.")
            length = int(declared)
        if not chunked and not length:
            return None, True, None
        if length is not None and length <= self.config.replayable_request_bytes:
            return None
        return body_chunks(receive), False, None if chunked else length

    async def _relay(
        self,
        response: UpstreamResponse,
        ctx: RequestContext,
        scope: Scope,
        send: Send,
        gone: _Disconnect,
        upstream: Upstream,
    ) -> None:
        headers: list[tuple[bytes, bytes]] = []
        connection = None
        for name, value in response.raw_headers:  # names already lower-case
            if name in _DROP_RESPONSE:
                if name == b"connection":
                    connection = value if connection is None else connection + b"," + value
                continue
            if name in _LOCATIONS:
                value = _public_location(value, upstream.origin)
            headers.append((name, value))
        if connection is not None and connection.lower() != _KEEP_ALIVE:
            # Headers the upstream named in Connection are hop-by-hop too.
            named = _connection_names(connection)
            headers = [h for h in headers if h[0] not in named]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        if scope["method"] == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return
        length = response.content_length
        if length is not None and length <= self.config.buffer_response_bytes:
            body = response.read_now()  # a small answer has usually come whole with its head
            if body is None:
                body = await response.read()
            await send({"type": "http.response.body", "body": body})
            return
        async for chunk in response.iter_chunks():
            if gone():
                # The rest would be read for nobody: `release()` closes the connection.
                ctx.response.status = CLIENT_CLOSED_REQUEST
                return
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


def _public_location(value: bytes, origin: bytes) -> bytes:
    """`value` without the upstream's origin: a reference on the gateway's own origin.

    A redirect to `http://127.0.0.1:8001/...` would send the client to an address it
    cannot reach, and tell it where the upstream lives. The reference is made relative
    rather than rebuilt from the request's Host header, which the client chose.
    """
    if value[: len(origin)].lower() != origin:
        return value
    rest = value[len(origin) :]
    if not rest:
        return b"/"
    return rest if rest[:1] in (b"/", b"?", b"#") else value


class _Disconnect:
    """Whether the client has left: `receive` answers `http.disconnect` once the request
    body has been read and the client is gone, and at once, without a wait (uvicorn's does).

    Each look takes one step of a `receive()` call: a disconnect (or anything else) that is
    ready comes back from that step; one that would have to wait is closed unfinished, its
    wait withdrawn. A task waiting on `receive` for the whole exchange would say the same
    for some 60,000 instructions a request more (`bench/gateway_instructions.py`: a
    task, its wake-up and its end for every request), some 15% of a proxied request.
    A server whose `receive` always waits makes this say "still there": the answer is then
    relayed to nobody, and the server drops it.
    """

    __slots__ = ("armed", "gone", "receive")

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.armed = False  # until the request body has been read: it is not ours to take
        self.gone = False

    def __call__(self) -> bool:
        if self.gone or not self.armed:
            return self.gone
        step = self.receive()
        if not isinstance(step, Coroutine):
            return False
        try:
            step.send(None)
        except StopIteration as ready:
            message: Message = ready.value
            self.gone = message["type"] == "http.disconnect"
        except Exception:  # a server whose receive fails has lost its client
            self.gone = True
        else:
            step.close()  # it would have waited: nothing has happened yet
        return self.gone


_requests = UPSTREAM_REQUESTS.labels
_duration = UPSTREAM_REQUEST_SECONDS.labels


def _connection_names(value: bytes) -> set[bytes]:
    """The header names a Connection value lists, lower-case."""
    return {token.strip().lower() for token in value.split(b",")}

"""The app factory every service uses: lifespan, request ids, security headers, problem+json.

What an error says (status, title, problem type) is `keelson.errors`' alone; which
security headers an answer carries is `keelson.security_headers`'.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from random import getrandbits as _random_bits
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keelson.config import KeelsonSettings
from keelson.db import DATABASE_RETRY_AFTER, database_unavailable
from keelson.disconnect import SAFE_METHODS, CancelOnDisconnect
from keelson.docs import install_docs
from keelson.draining import drain_on_sigterm
from keelson.errors import (
    PROBLEM_JSON,
    BadRequest,
    KeelsonError,
    ServiceUnavailable,
    Unprocessable,
)
from keelson.health import health_router
from keelson.logging import (
    close_shippers,
    log_access_record,
    request_id_var,
    trace_id_var,
    user_id_var,
)
from keelson.metrics import HTTP_IN_FLIGHT, RequestMetrics, metrics_router, route_template
from keelson.monitor import capture_exception, isolated_scope
from keelson.plugins import PluginContainer
from keelson.security_headers import SecurityHeaders

__all__ = [
    "PROBLEM_JSON",
    "AccessRecorder",
    "Exchange",
    "Hook",
    "InFlight",
    "KeelsonApp",
    "ServiceMiddleware",
    "create_app",
    "exchange",
    "random_id",
]

# Writes one request's access record: (scope, status, seconds).
AccessRecorder = Callable[[Scope, int, float], None]
_log = logging.getLogger("keelson.http")
_access = logging.getLogger("keelson.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
# RFC 9110 7.2 / RFC 3986 3.2.2: what uri-host [ ":" port ] is made of (unreserved,
# percent-encoded and sub-delims characters, an IP literal's brackets, the port's colon).
# Deleting these leaves nothing of a Host that may be one: one C call, no regex.
_HOST_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=%:[]"
_SERVER_ERROR = "The server could not complete the request."


class Exchange:
    """One HTTP request's response side, shared by the layers inside `ServiceMiddleware`.

    `ServiceMiddleware` puts one in `scope["keelson.exchange"]` and applies it when the
    response starts: a layer adds response headers here instead of wrapping `send` (each
    wrapper is one more call on every message of every request), and reads the status here.
    A layer that writes the request's access record its own way says so here too
    (`record_with`), instead of timing the request again around the layers inside it.
    """

    __slots__ = (
        "enforced",
        "extra",
        "policy_enforced",
        "recorder",
        "reported",
        "started",
        "status",
    )

    def __init__(self) -> None:
        self.status = 500  # what the access record says if the app never answers
        self.started = False
        self.reported = False  # an exception already logged and answered with a 500
        self.policy_enforced = False  # a whole policy enforced: no default headers to add
        self.extra: list[tuple[bytes, bytes]] = []
        self.enforced: dict[bytes, bytes] | None = None
        self.recorder: AccessRecorder | None = None

    def add_headers(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        """Append `headers` (lower-case names) to the response, whatever the app sent."""
        self.extra.extend(headers)

    def enforce_headers(self, headers: dict[bytes, bytes]) -> None:
        """Give the response these values (lower-case names), replacing any the app sent."""
        self.enforced = headers if self.enforced is None else {**self.enforced, **headers}

    def enforce_policy(self, policy: SecurityHeaders, path: str) -> None:
        """Give the response `policy`'s security headers (for `path`) in place of the
        service's default policy's, replacing any the app sent."""
        self.enforce_headers(policy.for_path(path))
        self.policy_enforced = True

    def record_with(self, recorder: AccessRecorder) -> None:
        """Have `recorder(scope, status, seconds)` write this request's access record, in
        place of `ServiceMiddleware`'s own: it runs whether or not the service's `access_log`
        is on, and for any path (probes too; the layer decides what to skip).

        It is called when the request ends, before its metrics are recorded, with the
        request's logging context (request, trace and user ids) still bound.
        """
        self.recorder = recorder


def exchange(scope: Scope) -> Exchange:
    """The request's `Exchange`; only inside `ServiceMiddleware`."""
    found: Exchange = scope["keelson.exchange"]
    return found


class ServiceMiddleware:
    """Keelson's work around every HTTP request, as one layer with one `send` wrapper.

    In order: counts the request in flight (shutdown drains them); takes `X-Request-ID`
    (or makes one) and W3C `traceparent` and binds both to the logging context; records
    RED metrics by route template; adds the API's security headers the response lacks and
    echoes the request id; turns an exception raised before the response started into a
    500 problem inside that context; writes one `keelson.access` record (unless
    `access_log` is off; probes and `/metrics` are skipped) or has a layer's recorder write
    it (`Exchange.record_with`); then restores the logging context as it found it, the
    user id that route code or a layer bound included (so no layer need unbind it).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        service: str,
        tracker: InFlight,
        access_log: bool = True,
        security_headers: SecurityHeaders | None = None,
        quiet_prefixes: Iterable[str] = ("/health", "/metrics"),
    ) -> None:
        self.app = app
        self.tracker = tracker
        self.metrics = RequestMetrics(service)
        self.access_log = access_log
        self.quiet = tuple(quiet_prefixes)
        self.security_headers = security_headers or SecurityHeaders()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = trace_id = None
        hosts = 0
        empty_host = bad_host = False
        for name, value in scope["headers"]:
            if name == b"host":
                # granian (the gateway's server) reports a missing Host as an empty one:
                # an empty Host counts as none (an origin-form target needs its authority).
                hosts += 1
                empty_host = empty_host or not value
                bad_host = bad_host or bool(value.translate(None, _HOST_BYTES))
            elif name == b"x-request-id":
                candidate = value.decode("latin-1")
                if _REQUEST_ID.match(candidate):
                    request_id = candidate
            elif name == b"traceparent":
                match = _TRACEPARENT.match(value.decode("latin-1"))
                if match:
                    trace_id = match.group(1)
        request_id = request_id or random_id()
        path: str = scope["path"]
        policy = self.security_headers
        request_id_header = (b"x-request-id", request_id.encode())
        ex = Exchange()
        scope["keelson.exchange"] = ex

        def send_decorated(message: Message) -> Awaitable[None]:
            # A plain function: the server's `send` is the only coroutine frame per message.
            if message["type"] == "http.response.start":
                ex.started = True
                ex.status = message["status"]
                sent: list[tuple[bytes, bytes]] = message.get("headers", [])
                headers = sent if type(sent) is list else list(sent)  # any iterable, read once
                names = b"".join([name for name, _ in headers])
                if names and not names.islower():  # the usual case needs no lower() per name
                    headers = [(name.lower(), value) for name, value in headers]
                enforced = ex.enforced
                if enforced:
                    headers = [h for h in headers if h[0] not in enforced]
                    headers.extend(enforced.items())
                elif headers is sent:
                    headers = headers.copy()  # the app's own list is not ours to extend
                if not ex.policy_enforced:
                    present = {name for name, _ in headers}
                    defaults = policy.for_path(path).items()
                    headers.extend([h for h in defaults if h[0] not in present])
                headers.extend(ex.extra)
                headers.append(request_id_header)
                message["headers"] = headers
            return send(message)

        tracker = self.tracker
        if not tracker.count:
            tracker.idle.clear()
        tracker.count += 1
        rid_token = request_id_var.set(request_id)
        trace_id = trace_id or random_id()
        tid_token = trace_id_var.set(trace_id)
        # No user yet: usually none is bound outside either, and then nothing is set here.
        uid_token = user_id_var.set(None) if user_id_var.get() is not None else None
        started = time.perf_counter()
        with isolated_scope(trace_id=trace_id, request_id=request_id):
            try:
                # RFC 9112, 3.2: an HTTP/1.1 request without a Host, or any with two, or one
                # whose value is no host, is a 400.
                if hosts > 1 or ((hosts == 0 or empty_host) and scope.get("http_version") == "1.1"):
                    await BadRequest("A request needs exactly one Host header.").send_to(
                        send_decorated, path
                    )
                elif bad_host:
                    await BadRequest("The Host header is not a host.").send_to(send_decorated, path)
                elif path[:1] != "/" and not (path == "*" and scope["method"] == "OPTIONS"):
                    # RFC 9112, 3.2: a server's target is a path (or `*` for OPTIONS); granian
                    # hands on one it could not read as such (`GET x`, `CONNECT a:443`) as "".
                    await BadRequest("The request target is not a path.").send_to(send_decorated)
                else:
                    await self.app(scope, receive, send_decorated)
            except Exception as exc:
                if ex.started:
                    if ex.reported:
                        return  # FastAPI's error middleware logged it, answered, and re-raised
                    raise
                await _internal_error(exc, method=scope["method"], path=path).send_to(
                    send_decorated, path
                )
            finally:
                try:
                    self._record(scope, path, ex, time.perf_counter() - started)
                finally:
                    if uid_token is not None:
                        user_id_var.reset(uid_token)
                    elif user_id_var.get() is not None:  # bound by a layer (security)
                        user_id_var.set(None)  # as before the request: none
                    trace_id_var.reset(tid_token)
                    request_id_var.reset(rid_token)
                    tracker.count -= 1
                    if tracker.count == 0:
                        tracker.idle.set()

    def _record(self, scope: Scope, path: str, ex: Exchange, seconds: float) -> None:
        """The request's access record, then its metrics (the record's writer may name the
        route they are counted under)."""
        status = ex.status
        try:
            if ex.recorder is not None:
                ex.recorder(scope, status, seconds)
            elif (
                self.access_log
                and not path.startswith(self.quiet)
                and _access.isEnabledFor(logging.INFO)
            ):
                client = scope.get("client")
                # request_id, trace_id and user_id come from the context the logger binds.
                log_access_record(
                    _access,
                    logging.INFO,
                    scope["method"],
                    route_template(scope),
                    status,
                    seconds,
                    client[0] if client else None,
                )
        finally:
            if path != "/metrics":
                self.metrics.observe(scope, status, seconds)


def random_id() -> str:
    """128 random bits as 32 hex digits, like `uuid4().hex` at a fraction of its cost.

    Request and trace ids need to be unique, not secret: Mersenne Twister bits will do,
    without a system call per id.
    """
    return _random_bits(128).to_bytes(16).hex()  # twice as fast as f"{...:032x}"


class InFlight:
    """Counts in-flight requests so shutdown can wait for them to finish."""

    def __init__(self) -> None:
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()

    async def drain(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


def _internal_error(exc: Exception, *, method: str, path: str) -> KeelsonError:
    """Log and report `exc` in full; the client learns only that it failed.

    A database that cannot be reached is no bug: 503 with Retry-After, so that callers
    (the gateway retries idempotent requests) try again rather than give up.
    """
    if database_unavailable(exc):
        _log.warning("database unavailable on %s %s: %s", method, path, type(exc).__name__)
        return ServiceUnavailable(
            "The database is unavailable; try again shortly.", retry_after=DATABASE_RETRY_AFTER
        )
    _log.exception("unhandled error on %s %s", method, path, exc_info=exc)
    capture_exception(exc, context={"path": path, "method": method})
    return KeelsonError(_SERVER_ERROR)


async def _keelson_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, KeelsonError)
    return exc.response(request.url.path)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else None
    headers = dict(exc.headers) if exc.headers else None
    return KeelsonError.for_status(exc.status_code, detail, headers=headers).response(
        request.url.path
    )


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    # The offending input is not echoed back: it may be a password.
    errors = [
        {
            "loc": [str(part) for part in error.get("loc", ())],
            "msg": error.get("msg", ""),
            "type": error.get("type", ""),
        }
        for error in exc.errors()
    ]
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    field = ".".join(part for part in first["loc"] if part not in ("body", "query", "path"))
    detail = f"{field}: {first['msg']}" if field else str(first["msg"])
    return Unprocessable(detail, errors=errors).response(request.url.path)


async def _unhandled_error(request: Request, exc: Exception) -> Response:
    """Starlette's error middleware calls this, answers with it, then re-raises `exc`
    (for the server to log): the `Exchange` says it has been logged and answered."""
    found = request.scope.get("keelson.exchange")
    if isinstance(found, Exchange):
        found.reported = True
    error = _internal_error(exc, method=request.method, path=request.url.path)
    return error.response(request.url.path)


Hook = Callable[[FastAPI], Awaitable[None]]  # run at startup / shutdown with the app


def _lifespan(
    settings: KeelsonSettings,
    container: PluginContainer,
    in_flight: InFlight,
    on_startup: Sequence[Hook],
    on_shutdown: Sequence[Hook],
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Start the container, then hooks; at shutdown refuse readiness, drain, stop in reverse."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await container.start()
        try:
            for hook in on_startup:
                await hook(app)
        except BaseException:
            await container.stop()  # what started must not outlive a failed start
            raise
        _log.info("%s ready on port %s", settings.service, settings.port)

        def start_draining() -> None:
            app.state.draining = True

        uninstall = drain_on_sigterm(settings.drain_pause_seconds, start_draining)
        try:
            yield
        finally:
            uninstall()
            app.state.draining = True
            if not await in_flight.drain(settings.shutdown_grace_seconds):
                _log.warning("shutdown grace elapsed with %d requests in flight", in_flight.count)
            try:
                for hook in reversed(on_shutdown):
                    await hook(app)
                await container.stop()
            finally:
                await asyncio.to_thread(close_shippers)

    return lifespan


Front = Callable[[ASGIApp], ASGIApp]  # wraps the app's own stack in layers of its own
OpenApiMerge = Callable[[dict[str, Any]], dict[str, Any]]


class KeelsonApp(FastAPI):
    """FastAPI, optionally fronted by layers of the service's own (`create_app`'s `front`).

    With a front, every HTTP request goes `ServiceMiddleware` → the front's layers →
    FastAPI's own stack (error middleware, exception handlers, routing); a layer that
    answers a request itself (the gateway's proxy) spares it FastAPI's machinery, which
    would only pass it through. Without one, `ServiceMiddleware` is the outermost of
    FastAPI's own middleware.
    """

    _front: ASGIApp | None = None
    # The same front behind `CancelOnDisconnect`, for state-changing methods: a request
    # whose client leaves before the answer is cancelled (safe methods skip the layer).
    _front_unsafe: ASGIApp | None = None
    _openapi_merge: OpenApiMerge | None = None

    def openapi(self) -> dict[str, Any]:
        """The app's OpenAPI document, passed through `create_app`'s `openapi_merge`."""
        own = super().openapi()
        merge = self._openapi_merge
        return own if merge is None else merge(own)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A coroutine function, as servers tell ASGI 3 apps from ASGI 2 ones by that.
        await self.dispatch(scope, receive, send)

    def dispatch(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """The app as a plain function returning the request's awaitable: for a server told
        the app is ASGI 3 (granian; uvicorn's `interface="asgi3"`) or for an outer layer,
        it spares every resumption of the request's task one coroutine frame."""
        front = self._front
        if front is not None and scope["type"] == "http":
            unsafe = self._front_unsafe
            if unsafe is not None and scope["method"] not in SAFE_METHODS:
                front = unsafe
            return front(scope, receive, send)
        return super().__call__(scope, receive, send)

    async def _own_stack(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)


def create_app(
    settings: KeelsonSettings,
    *,
    container: PluginContainer,
    routers: Sequence[APIRouter] = (),
    title: str | None = None,
    description: str = "",
    version: str = "0.1.0",
    on_startup: Sequence[Hook] = (),
    on_shutdown: Sequence[Hook] = (),
    front: Front | None = None,
    openapi_merge: OpenApiMerge | None = None,
    security_headers: SecurityHeaders | None = None,
) -> KeelsonApp:
    """A FastAPI app whose lifespan starts and stops `container`, with Keelson's middleware.

    `ServiceMiddleware` (the access record unless `settings.access_log` is off) comes
    first; then `front(app's own stack)` when given (see `KeelsonApp`), else middleware the
    caller appends to `app.user_middleware` (Starlette's `add_middleware` would put it
    outside, where no request id or `Exchange` exists yet); the caller's `routers` last.
    `openapi_merge` receives the app's own OpenAPI document on each request for it and
    returns the one served. `security_headers` is the policy whose headers
    `ServiceMiddleware` adds to an answer that lacks them (`SecurityHeaders()` when None).
    """
    in_flight = InFlight()
    app = KeelsonApp(
        title=title or f"Keelson {settings.service}",
        description=description,
        version=version,
        lifespan=_lifespan(settings, container, in_flight, on_startup, on_shutdown),
        docs_url=None,  # keelson.docs serves both, without a CDN
        redoc_url=None,
        exception_handlers={
            KeelsonError: _keelson_error,
            StarletteHTTPException: _http_error,
            RequestValidationError: _validation_error,
            Exception: _unhandled_error,
        },
    )
    app.state.settings = settings
    app.state.container = container
    app.state.draining = False
    app.include_router(health_router(container))
    app.include_router(metrics_router())
    install_docs(app)
    for router in routers:
        app.include_router(router)
    options: dict[str, Any] = {
        "service": settings.service,
        "tracker": in_flight,
        "access_log": settings.access_log,
        "security_headers": security_headers,
    }
    if front is None:
        app.add_middleware(ServiceMiddleware, **options)
        # Innermost of the app's own middleware: a request whose caller left is cancelled.
        app.user_middleware.append(Middleware(CancelOnDisconnect))
    else:
        fronted = front(app._own_stack)
        app._front = ServiceMiddleware(fronted, **options)
        # Right inside ServiceMiddleware for state-changing methods: it covers what the
        # front answers itself (the gateway's proxy) and what it passes on alike.
        app._front_unsafe = ServiceMiddleware(CancelOnDisconnect(fronted), **options)
    app._openapi_merge = openapi_merge
    HTTP_IN_FLIGHT.labels(settings.service).set_function(lambda: in_flight.count)
    return app

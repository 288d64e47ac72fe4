"""The app factory every service uses: lifespan, request ids, security headers, problem+json."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from http import HTTPStatus
from random import getrandbits as _random_bits
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keelson.config import KeelsonSettings
from keelson.db import DATABASE_RETRY_AFTER, database_unavailable
from keelson.disconnect import SAFE_METHODS, CancelOnDisconnect
from keelson.docs import DOCS_CSP, install_docs
from keelson.draining import drain_on_sigterm
from keelson.errors import KeelsonError, ServiceUnavailable
from keelson.health import health_router
from keelson.logging import (
    close_shippers,
    log_access_record,
    request_id_var,
    trace_id_var,
    user_id_var,
)
from keelson.metrics import HTTP_IN_FLIGHT, RequestMetrics, metrics_router, route_template
from keelson.monitor import capture_exception
from keelson.plugins import PluginContainer

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
    "problem_response",
    "random_id",
]

PROBLEM_JSON = "application/problem+json"
# Writes one request's access record: (scope, status, seconds).
AccessRecorder = Callable[[Scope, int, float], None]
_log = logging.getLogger("keelson.http")
_access = logging.getLogger("keelson.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
_STATUS_SLUGS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    409: "conflict",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "validation",
    429: "rate-limited",
}
_TITLES = {
    405: "Method Not Allowed",
    406: "Not Acceptable",
    500: "Internal Server Error",
}


def problem_response(
    status: int,
    title: str,
    detail: str,
    *,
    type_uri: str | None = None,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": type_uri or f"https://keelson.dev/problems/{_STATUS_SLUGS.get(status, 'error')}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    if request_id := request_id_var.get():
        body["request_id"] = request_id
    body.update(extensions)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


class Exchange:
    """One HTTP request's response side, shared by the layers inside `ServiceMiddleware`.

    `ServiceMiddleware` puts one in `scope["keelson.exchange"]` and applies it when the
    response starts: a layer adds response headers here instead of wrapping `send` (each
    wrapper is one more call on every message of every request), and reads the status here.
    A layer that writes the request's access record its own way says so here too
    (`record_with`), instead of timing the request again around the layers inside it.
    """

    __slots__ = ("enforced", "extra", "recorder", "started", "status")

    def __init__(self) -> None:
        self.status = 500  # what the access record says if the app never answers
        self.started = False
        self.extra: list[tuple[bytes, bytes]] = []
        self.enforced: dict[bytes, bytes] | None = None
        self.recorder: AccessRecorder | None = None

    def add_headers(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        """Append `headers` (lower-case names) to the response, whatever the app sent."""
        self.extra.extend(headers)

    def enforce_headers(self, headers: dict[bytes, bytes]) -> None:
        """Give the response these values (lower-case names), replacing any the app sent."""
        self.enforced = headers if self.enforced is None else {**self.enforced, **headers}

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
        hsts: bool = False,
        docs_prefixes: Iterable[str] = ("/docs", "/redoc"),
        quiet_prefixes: Iterable[str] = ("/health", "/metrics"),
    ) -> None:
        self.app = app
        self.tracker = tracker
        self.metrics = RequestMetrics(service)
        self.access_log = access_log
        self.quiet = tuple(quiet_prefixes)
        self.docs_prefixes = tuple(docs_prefixes)
        headers = {
            b"x-content-type-options": b"nosniff",
            b"x-frame-options": b"DENY",
            b"referrer-policy": b"no-referrer",
            b"cross-origin-opener-policy": b"same-origin",
            b"content-security-policy": b"default-src 'none'; frame-ancestors 'none'",
        }
        if hsts:
            headers[b"strict-transport-security"] = b"max-age=63072000; includeSubDomains"
        self.headers = headers
        # Swagger UI and ReDoc load their assets from this origin (keelson.docs); the API
        # itself needs nothing.
        self.docs_headers = {**headers, b"content-security-policy": DOCS_CSP.encode()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = trace_id = None
        hosts = 0
        for name, value in scope["headers"]:
            if name == b"host":
                hosts += 1
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
        defaults = self.docs_headers if path.startswith(self.docs_prefixes) else self.headers
        request_id_header = (b"x-request-id", request_id.encode())
        ex = Exchange()
        scope["keelson.exchange"] = ex
        scope.setdefault("state", {})["request_id"] = request_id

        def send_decorated(message: Message) -> Awaitable[None]:
            # A plain function: the server's `send` is the only coroutine frame per message.
            if message["type"] == "http.response.start":
                ex.started = True
                ex.status = message["status"]
                headers: list[tuple[bytes, bytes]] = message.get("headers", [])
                if type(headers) is not list:
                    headers = list(headers)  # any iterable, read once
                names = b"".join([name for name, _ in headers])
                if names and not names.islower():  # the usual case needs no lower() per name
                    headers = [(name.lower(), value) for name, value in headers]
                enforced = ex.enforced
                if enforced:
                    headers = [h for h in headers if h[0] not in enforced]
                    headers.extend(enforced.items())
                present = {name for name, _ in headers}
                message["headers"] = [
                    *headers,
                    *[h for h in defaults.items() if h[0] not in present],
                    *ex.extra,
                    request_id_header,
                ]
            return send(message)

        tracker = self.tracker
        if not tracker.count:
            tracker.idle.clear()
        tracker.count += 1
        rid_token = request_id_var.set(request_id)
        tid_token = trace_id_var.set(trace_id or random_id())
        uid_token = user_id_var.set(None)
        started = time.perf_counter()
        try:
            # RFC 9112, 3.2: an HTTP/1.1 request without a Host, or any with two, is a 400.
            if hosts > 1 or (hosts == 0 and scope.get("http_version") == "1.1"):
                await problem_response(
                    400, "Bad Request", "A request needs exactly one Host header.", instance=path
                )(scope, receive, send_decorated)
            else:
                await self.app(scope, receive, send_decorated)
        except Exception as exc:
            if ex.started:
                raise
            await _internal_error(exc, method=scope["method"], path=path)(
                scope, receive, send_decorated
            )
        finally:
            try:
                self._record(scope, path, ex, time.perf_counter() - started)
            finally:
                user_id_var.reset(uid_token)
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


def _internal_error(exc: Exception, *, method: str, path: str) -> JSONResponse:
    """Log and report `exc` in full; the client learns only that it failed.

    A database that cannot be reached is no bug: 503 with Retry-After, so that callers
    (the gateway retries idempotent requests) try again rather than give up.
    """
    if database_unavailable(exc):
        _log.warning("database unavailable on %s %s: %s", method, path, type(exc).__name__)
        unavailable = ServiceUnavailable(
            "The database is unavailable; try again shortly.", retry_after=DATABASE_RETRY_AFTER
        )
        return problem_response(
            unavailable.status,
            unavailable.title,
            unavailable.detail,
            type_uri=unavailable.type_uri,
            instance=path,
            headers=unavailable.headers,
        )
    _log.exception("unhandled error on %s %s", method, path, exc_info=exc)
    capture_exception(exc, context={"path": path, "method": method})
    return problem_response(
        500,
        "Internal Server Error",
        "The server could not complete the request.",
        instance=path,
    )


async def _keelson_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, KeelsonError)
    body = exc.problem(instance=request.url.path)
    return problem_response(
        exc.status,
        body.pop("title"),
        body.pop("detail"),
        type_uri=body.pop("type"),
        instance=body.pop("instance", None),
        headers=exc.headers,
        **{k: v for k, v in body.items() if k != "status"},
    )


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    title = _TITLES.get(exc.status_code) or _phrase(exc.status_code)
    detail = exc.detail if isinstance(exc.detail, str) else title
    return problem_response(
        exc.status_code,
        title,
        detail,
        instance=request.url.path,
        headers=dict(exc.headers) if exc.headers else None,
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
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
    return problem_response(
        422, "Unprocessable Content", detail, instance=request.url.path, errors=errors
    )


async def _unhandled_error(request: Request, exc: Exception) -> JSONResponse:
    # Reached only by errors raised outside `UnhandledErrorMiddleware` (in outer middleware).
    return _internal_error(exc, method=request.method, path=request.url.path)


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


class KeelsonApp(FastAPI):
    """FastAPI with an express lane beside its own stack of middleware and routing.

    Requests the lane accepts go to its app under `ServiceMiddleware` alone: FastAPI's and
    Starlette's layers (error, telemetry and body-limit middleware, exception handlers,
    routing) would only pass them through. The gateway sends what it proxies this way.
    """

    _service_options: dict[str, Any]
    # What the lane accepts, then its app for safe methods and for the others (which
    # `CancelOnDisconnect` cancels when the client leaves before the answer).
    _lane: tuple[Callable[[Scope], bool], ASGIApp, ASGIApp] | None = None

    def set_express_lane(self, accepts: Callable[[Scope], bool], app: ASGIApp) -> None:
        """HTTP requests for which `accepts(scope)` is true go to `app` from now on.

        They see none of FastAPI's own machinery: no `scope["app"]` or `scope["router"]`
        (so no `Request.app`), no `root_path` handling, and no middleware added to this app
        with `add_middleware`; only `ServiceMiddleware`, then `app`.
        """
        self._lane = (
            accepts,
            ServiceMiddleware(app, **self._service_options),
            ServiceMiddleware(CancelOnDisconnect(app), **self._service_options),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A coroutine function, as servers tell ASGI 3 apps from ASGI 2 ones by that.
        lane = self._lane
        if lane is not None and scope["type"] == "http" and lane[0](scope):
            safe = scope["method"] in SAFE_METHODS
            await (lane[1] if safe else lane[2])(scope, receive, send)
            return
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
) -> KeelsonApp:
    """A FastAPI app whose lifespan starts and stops `container`, with Keelson's middleware.

    `ServiceMiddleware` is the outermost of the app's own middleware (the access record
    unless `settings.access_log` is off); middleware the caller appends to
    `app.user_middleware` sits inside it (Starlette's `add_middleware` would put it
    outside, where no request id or `Exchange` exists yet), and the caller's `routers`
    inside them all.
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
    app._service_options = {
        "service": settings.service,
        "tracker": in_flight,
        "access_log": settings.access_log,
    }
    app.add_middleware(ServiceMiddleware, **app._service_options)
    # Innermost of the app's own middleware: a request whose caller left is cancelled.
    app.user_middleware.append(Middleware(CancelOnDisconnect))
    HTTP_IN_FLIGHT.labels(settings.service).set_function(lambda: in_flight.count)
    return app

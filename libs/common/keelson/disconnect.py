"""Work whose caller has gone is cancelled before it commits.

When the gateway gives up on a request (its client disconnected, or its upstream timeout
elapsed) it closes the connection, and the service's server tells the app with an
`http.disconnect` message. Nothing reads that message while a handler runs, so the
handler would go on and commit work that was answered, to somebody, as a failure.

`CancelOnDisconnect` watches for it on requests that change state (not GET, HEAD or
OPTIONS) once the app has read the whole request body: a disconnect before the response
has started cancels the request's task, so an open transaction rolls back instead of
committing. The access record says 499 (the client closed the request). A disconnect
that lands while COMMIT itself is on its way cannot be taken back; the window is the
commit's round trip instead of the handler's whole run. Requests whose app never reads
the body (nothing to watch from) are not watched.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CLIENT_CLOSED_REQUEST", "SAFE_METHODS", "CancelOnDisconnect"]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a request its client abandoned
_log = logging.getLogger("keelson.http")


class _Watch:
    """One request's `receive`, passed through until the body is read, then watched."""

    __slots__ = ("after_body", "cancelled", "receive", "started", "task", "watcher")

    def __init__(self, receive: Receive, task: asyncio.Task[object]) -> None:
        self.receive = receive
        self.task = task
        self.started = False  # the response has started: too late to cancel
        self.cancelled = False
        self.watcher: asyncio.Task[None] | None = None
        self.after_body: asyncio.Future[Message] | None = None

    async def app_receive(self) -> Message:
        if self.after_body is not None:
            return await asyncio.shield(self.after_body)
        message = await self.receive()
        if message["type"] == "http.request" and not message.get("more_body", False):
            self.after_body = asyncio.get_running_loop().create_future()
            self.watcher = asyncio.create_task(self._watch(), name="disconnect-watch")
        return message

    async def _watch(self) -> None:
        assert self.after_body is not None
        try:
            message = await self.receive()
        except Exception as exc:  # a server whose receive fails has lost its client
            self.after_body.set_exception(exc)
            message = {"type": "http.disconnect"}
        else:
            self.after_body.set_result(message)
        if message["type"] == "http.disconnect" and not self.started:
            self.cancelled = True
            self.task.cancel()

    def stop(self) -> None:
        if self.watcher is not None and not self.watcher.done():
            self.watcher.cancel()
        if self.after_body is not None and not self.after_body.done():
            self.after_body.cancel()


class CancelOnDisconnect:
    """ASGI middleware: cancel a state-changing request whose client left before its answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        task = asyncio.current_task()
        assert task is not None
        watch = _Watch(receive, task)

        async def watched_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                watch.started = True
            await send(message)

        try:
            await self.app(scope, watch.app_receive, watched_send)
        except asyncio.CancelledError:
            if not watch.cancelled or task.uncancel() > 0:
                raise  # cancelled by someone else (the server's shutdown) as well
            exchange = scope.get("keelson.exchange")
            if exchange is not None:
                exchange.status = CLIENT_CLOSED_REQUEST
            _log.info(
                "%s %s: the client left before the answer; the request was cancelled",
                scope["method"],
                scope["path"],
            )
        finally:
            # Not awaited: the request's access record and metrics follow its last `send`
            # without a turn of the loop in between, as they would without this layer.
            watch.stop()

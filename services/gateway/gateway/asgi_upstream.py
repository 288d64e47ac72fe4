"""An upstream ASGI app driven in this process, no socket (as `httpx.ASGITransport` does)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Sequence
from urllib.parse import unquote

from starlette.types import ASGIApp, Message

from gateway.transport import Body, Headers, UpstreamDisconnected

__all__ = ["ASGIResponse", "ASGIUpstream"]


class ASGIResponse:
    """An in-process app's answer (`gateway.transport.UpstreamResponse`)."""

    def __init__(self, task: asyncio.Task[None] | None = None) -> None:
        self.status = 0
        self.raw_headers: Sequence[tuple[bytes, bytes]] = ()
        self.content_length: int | None = None
        self.task = task
        self._chunks: collections.deque[bytes] = collections.deque()
        self._more = asyncio.Event()
        self.eof = False
        self.failure: BaseException | None = None

    def start(self, message: Message) -> None:
        self.status = message["status"]
        # Names lower-case, as the transport promises (an app may send them as it likes).
        self.raw_headers = [(name.lower(), value) for name, value in message.get("headers", ())]
        for name, value in self.raw_headers:
            if name == b"content-length" and value.isdigit():
                self.content_length = int(value)

    def feed(self, message: Message) -> None:
        if message.get("body"):
            self._chunks.append(message["body"])
        if not message.get("more_body", False):
            self.eof = True
        self._more.set()

    def fail(self, exc: BaseException) -> None:
        self.failure = exc
        self._more.set()

    async def complete(self) -> None:
        """Until the answer is whole (or failed)."""
        while not self.eof and self.failure is None:
            self._more.clear()
            await self._more.wait()

    def read_now(self) -> bytes | None:
        if not self.eof:
            return None
        return self._take()

    async def read(self) -> bytes:
        chunks = []
        async for chunk in self.iter_chunks():
            chunks.append(chunk)
        return b"".join(chunks)

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        while True:
            if self._chunks:
                yield self._take()
            elif self.eof:
                return
            elif self.failure is not None:
                raise self.failure
            else:
                self._more.clear()
                await self._more.wait()

    def _take(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data

    def release(self) -> None:
        """An answer not read to its end ends its app's task."""
        if self.task is not None and not self.task.done():
            self.task.cancel()


class ASGIUpstream:
    """Sends each request to `app` in a task of its own, as a server would, and answers
    once the app starts its response (`gateway.transport.UpstreamTransport`).

    An app that fails before it answers is a connection the upstream dropped
    (`UpstreamDisconnected`), as a server would close it; its exception is the cause.
    """

    def __init__(self, app: ASGIApp, *, host: str = "upstream") -> None:
        self.app = app
        self.host = host.encode("latin-1")
        self.tasks: set[asyncio.Task[None]] = set()

    async def request(
        self,
        method: str,
        target: bytes,
        headers: Headers,
        body: Body = None,
        *,
        length: int | None = None,
    ) -> ASGIResponse:
        probe = b"".join([target, *(name + value for name, value in headers)])
        if b"\r" in probe or b"\n" in probe:
            raise ValueError("a line break inside the request line or a header")
        path, _, query = target.partition(b"?")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": unquote(path.decode("latin-1")),
            "raw_path": path,
            "query_string": query,
            "root_path": "",
            "headers": [(b"host", self.host), *headers, *_framing(method, body, length)],
            "client": ("127.0.0.1", 0),
            "server": (self.host.decode("latin-1"), 80),
        }
        response = ASGIResponse()
        started = asyncio.get_running_loop().create_future()
        parts = _messages(body)

        async def receive() -> Message:
            message = await anext(parts, None)
            if message is not None:
                return message
            await response.complete()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                response.start(message)
                if not started.done():
                    started.set_result(None)
            elif message["type"] == "http.response.body":
                response.feed(message)

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            except Exception as exc:
                failed = UpstreamDisconnected("the upstream app failed")
                failed.__cause__ = exc
                if not started.done():
                    started.set_exception(failed)
                response.fail(failed)
                return
            if not started.done():
                started.set_exception(UpstreamDisconnected("the upstream app did not answer"))
            if not response.eof:
                response.fail(UpstreamDisconnected("the upstream app's answer ended early"))

        task = asyncio.get_running_loop().create_task(run())
        response.task = task
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        try:
            await started
        except BaseException:
            task.cancel()
            raise
        return response

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def _messages(body: Body) -> AsyncIterator[Message]:
    """The request body as `http.request` messages."""
    if body is None or isinstance(body, bytes):
        yield {"type": "http.request", "body": body or b"", "more_body": False}
        return
    async for chunk in body:
        yield {"type": "http.request", "body": chunk, "more_body": True}
    yield {"type": "http.request", "body": b"", "more_body": False}


def _framing(method: str, body: Body, length: int | None) -> list[tuple[bytes, bytes]]:
    """The body's framing headers, as `UpstreamPool` would send them."""
    if isinstance(body, bytes):
        if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
            return [(b"content-length", b"%d" % len(body))]
        return []
    if body is None:
        return []
    if length is None:
        return [(b"transfer-encoding", b"chunked")]
    return [(b"content-length", b"%d" % length)]

"""Real peers for StripeProvider: localstripe in a process, and a fault proxy before it.

localstripe is a stateful Stripe emulator; what it lacks the proxy adds: answers with a
given status (500s), answers lost after the work was done, requests that hang past the
client's timeout, and Stripe's
idempotency (a repeated Idempotency-Key gets the first answer; another body, a 400
`idempotency_error`).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx
from aiohttp import web

from keelson_dev.embedded import free_port

API_KEY = "sk_test_keelson_localstripe"


class LocalStripe:
    """`python -m localstripe` on a free port, from scratch, until `stop`."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "localstripe.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "localstripe", "--port", str(self.port), "--from-scratch"],
                cwd=workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            assert self.process.poll() is None, self.log.read_text()
            try:
                httpx.get(f"{self.url}/v1/customers", auth=(API_KEY, ""), timeout=1)
                return
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # a bounded poll for the port to answer

    def register_webhook(self, url: str, secret: str) -> None:
        response = httpx.post(
            f"{self.url}/_config/webhooks/keelson", data={"url": url, "secret": secret}
        )
        response.raise_for_status()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class _Remembered:
    body: bytes
    status: int
    payload: bytes
    content_type: str


@dataclass
class FaultProxy:
    """An HTTP proxy to `upstream` that injects faults and keeps Stripe's idempotency."""

    upstream: str
    port: int = field(default_factory=free_port)
    fail: list[int] = field(default_factory=list)  # statuses for the next requests
    hang: int = 0  # how many of the next requests hang until the proxy stops
    lose: int = 0  # how many of the next answers are replaced by a 500 after the work is done
    received: int = 0
    forwarded: int = 0
    _remembered: dict[str, _Remembered] = field(default_factory=dict)
    _release: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._session = aiohttp.ClientSession()
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.received += 1
        body = await request.read()
        if self.hang:
            self.hang -= 1
            await self._release.wait()
        if self.fail:
            status = self.fail.pop(0)
            return web.json_response(
                {"error": {"type": "api_error", "message": "injected"}}, status=status
            )
        key = request.headers.get("Idempotency-Key")
        remembered_key = f"{request.method} {request.path} {key}"
        if key and request.method == "POST":
            seen = self._remembered.get(remembered_key)
            if seen is not None:
                if seen.body != body:
                    return web.json_response(
                        {
                            "error": {
                                "type": "idempotency_error",
                                "message": "Keys for idempotent requests can only be used "
                                "with the same parameters they were first used with.",
                            }
                        },
                        status=400,
                    )
                return web.Response(
                    body=seen.payload,
                    status=seen.status,
                    headers={"Content-Type": seen.content_type, "Idempotent-Replayed": "true"},
                )
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in {"host", "content-length"}
        }
        assert self._session is not None
        self.forwarded += 1
        async with self._session.request(
            request.method, self.upstream + request.path_qs, data=body, headers=headers
        ) as answer:
            payload = await answer.read()
            content_type = answer.headers.get("Content-Type", "application/json")
            if key and request.method == "POST" and answer.status < 500:
                self._remembered[remembered_key] = _Remembered(
                    body, answer.status, payload, content_type
                )
            if self.lose:
                self.lose -= 1
                return web.json_response(
                    {"error": {"type": "api_error", "message": "answer lost"}}, status=500
                )
            return web.Response(
                body=payload, status=answer.status, headers={"Content-Type": content_type}
            )


@contextlib.contextmanager
def local_stripe(workdir: Path) -> Iterator[LocalStripe]:
    server = LocalStripe(workdir)
    try:
        yield server
    finally:
        server.stop()

"""Real upstreams for the gateway's tests: an app (echo, schema, slow, stream), a raw socket."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from jose import jwt
from pydantic import BaseModel, Field

from keelson.auth import IdentityVerifier, InvalidIdentity, verify_identity_headers
from keelson.keys import SigningKey


class Item(BaseModel):
    name: str = Field(min_length=1)
    count: int = Field(ge=0)
    tags: list[str] = []


def create_upstream(prefix: str = "/api/v1/logs") -> FastAPI:
    app = FastAPI(title="test upstream")
    app.state.calls = 0
    app.state.fail_next = 0

    @app.get("/health/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    async def echo(request: Request) -> JSONResponse:
        app.state.calls += 1
        body = await request.body()
        return JSONResponse(
            {
                "method": request.method,
                "path": request.url.path,
                "raw_path": request.scope["raw_path"].decode(),
                "query": request.url.query,
                "headers": [[k, v] for k, v in request.headers.items()],
                "body": body.decode("latin-1"),
            },
            headers={"x-upstream": "yes", "server": "upstream-server"},
        )

    for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
        app.add_api_route(
            prefix + "/echo", echo, methods=[method], operation_id=f"echo_{method.lower()}"
        )

    @app.post(prefix + "/items", status_code=201)
    async def create_item(item: Item) -> Item:
        return item

    @app.get(prefix + "/items/{item_id}")
    async def read_item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    @app.get(prefix + "/slow")
    async def slow(seconds: float = 1.0) -> dict[str, float]:
        await asyncio.sleep(seconds)
        return {"slept": seconds}

    @app.get(prefix + "/flaky")
    async def flaky() -> Response:
        app.state.calls += 1
        if app.state.fail_next > 0:
            app.state.fail_next -= 1
            return Response(status_code=503)
        return JSONResponse({"ok": True})

    @app.get(prefix + "/stream")
    async def stream(chunks: int = 64, size: int = 16384) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            for i in range(chunks):
                yield bytes([65 + i % 26]) * size

        return StreamingResponse(body(), media_type="application/octet-stream")

    @app.post(prefix + "/upload")
    async def upload(request: Request) -> dict[str, int]:
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
        return {"received": total}

    return app


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    connection: int


@dataclass
class SocketUpstream:
    """An HTTP/1.1 server on a socket: records requests; `answer` decides each response."""

    answer: Callable[[Seen], Awaitable[bytes | None]]
    requests: list[Seen] = field(default_factory=list)
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)  # by connection

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        self.writers.append(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionResetError):
                    # A client that closes with part of an answer unread resets (RST).
                    return
                line, *lines = head.decode("latin-1").split("\r\n")[:-2]
                method, target, _ = line.split(" ")
                headers = {k.lower(): v.strip() for k, v in (x.split(":", 1) for x in lines)}
                body = await self._body(reader, headers)
                seen = Seen(method, target, headers, body, number)
                self.requests.append(seen)
                response = await self.answer(seen)
                if response is None:  # hang up without answering
                    return
                writer.write(response)
                try:
                    await writer.drain()
                except ConnectionError:  # the client left with the answer unread
                    return
                if b"connection: close" in response.lower():
                    return
        finally:
            self.open_now -= 1
            writer.close()

    @staticmethod
    async def _body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
        if headers.get("transfer-encoding") == "chunked":
            chunks = []
            while size := int((await reader.readline()).strip(), 16):
                chunks.append(await reader.readexactly(size))
                await reader.readexactly(2)
            await reader.readexactly(2)
            return b"".join(chunks)
        return await reader.readexactly(int(headers.get("content-length", "0")))


def ok(body: bytes = b'{"ok":true}', *extra: str) -> bytes:
    lines = ["HTTP/1.1 200 OK", f"content-length: {len(body)}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@asynccontextmanager
async def serving(upstream: SocketUpstream) -> AsyncIterator[str]:
    """`upstream` on a socket of its own, for as long as the block runs; yields its URL."""
    server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


class TokenMint:
    """Signs access tokens the way the auth service does (ES256, kid, iss, aud, jti)."""

    def __init__(self) -> None:
        self.key = SigningKey.generate()

    def jwks(self) -> dict:
        return {"keys": [self.key.public_jwk()]}

    def mint(
        self,
        sub: str = "user-1",
        *,
        roles: tuple[str, ...] = ("user",),
        scope: str = "",
        expires_in: int = 300,
        jti: str | None = None,
    ) -> str:
        now = int(time.time())
        claims = {
            "sub": sub,
            "roles": list(roles),
            "scope": scope,
            "jti": jti or uuid.uuid4().hex,
            "iat": now,
            "nbf": now,
            "exp": now + expires_in,
            "iss": "keelson-auth",
            "aud": "keelson",
        }
        return jwt.encode(
            claims, self.key.private_pem, algorithm="ES256", headers={"kid": self.key.kid}
        )


def create_auth_upstream(mint: TokenMint, identity_key: IdentityVerifier) -> FastAPI:
    """A stand-in auth service: its JWKS, and a route that checks forwarded identity."""
    app = FastAPI(title="test auth")

    @app.get("/health/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.get("/.well-known/jwks.json")
    async def jwks() -> dict:
        return mint.jwks()

    @app.get("/api/v1/auth/whoami")
    async def whoami(request: Request) -> JSONResponse:
        forwarded = {k: v for k, v in request.headers.items() if k.startswith("x-keelson-")}
        try:
            principal = verify_identity_headers(request.headers, identity_key)
        except InvalidIdentity as exc:
            return JSONResponse({"error": exc.detail, "forwarded": forwarded}, status_code=401)
        return JSONResponse(
            {
                "user_id": principal.user_id if principal else None,
                "roles": sorted(principal.roles) if principal else [],
                "forwarded": forwarded,
            }
        )

    return app

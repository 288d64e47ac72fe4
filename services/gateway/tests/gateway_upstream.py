"""A small real upstream for the gateway's tests: echoes, a schema, slowness, streaming."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from jose import jwt
from pydantic import BaseModel, Field

from keelson.auth import InvalidIdentity, verify_identity_headers
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


def create_auth_upstream(mint: TokenMint, identity_key: bytes) -> FastAPI:
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

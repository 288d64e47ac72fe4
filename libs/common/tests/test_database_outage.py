"""A database that cannot be reached answers 503 problem+json with Retry-After, never 500."""

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import APIRouter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from keelson.config import KeelsonSettings, LogSettings
from keelson.db import async_url
from keelson.http import create_app
from keelson.plugins import PluginContainer
from keelson_dev.embedded import free_port


def app_over(engine: AsyncEngine) -> httpx.AsyncClient:
    router = APIRouter()

    @router.get("/query")
    async def query() -> dict[str, int]:
        async with engine.connect() as conn:
            return {"one": (await conn.execute(text("SELECT 1"))).scalar_one()}

    @router.get("/broken")
    async def broken() -> None:
        raise RuntimeError("a bug, not an outage")

    settings = KeelsonSettings(service="demo", log=LogSettings(ship_endpoint=None))
    app = create_app(settings, container=PluginContainer(settings), routers=[router])
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://demo.test")


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "5"
    assert response.json()["title"] == "Service Unavailable"


async def test_no_server_listening_is_503() -> None:
    engine = create_async_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x")
    try:
        async with app_over(engine) as client:
            assert_unavailable(await client.get("/query"))
            assert (await client.get("/broken")).status_code == 500  # a bug stays a 500
    finally:
        await engine.dispose()


async def test_an_exhausted_pool_is_503(test_database_url: str) -> None:
    engine = create_async_engine(
        async_url(test_database_url), pool_size=1, max_overflow=0, pool_timeout=0.2
    )
    try:
        async with app_over(engine) as client, engine.connect():  # holds the only connection
            assert_unavailable(await client.get("/query"))
        async with app_over(engine) as client:
            assert (await client.get("/query")).json() == {"one": 1}
    finally:
        await engine.dispose()


@pytest.fixture
async def one_connection_engine(test_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(
        async_url(test_database_url), pool_size=1, max_overflow=0, pool_pre_ping=False
    )
    yield engine
    await engine.dispose()


async def test_a_connection_killed_by_the_server_is_503(
    one_connection_engine: AsyncEngine, test_database_url: str
) -> None:
    engine = one_connection_engine
    async with app_over(engine) as client:
        assert (await client.get("/query")).status_code == 200
        async with engine.connect() as conn:
            pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        # As a PostgreSQL restart does: the server ends the pooled connection under us.
        killer = create_async_engine(async_url(test_database_url))
        try:
            async with killer.connect() as conn:
                await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        finally:
            await killer.dispose()
        assert_unavailable(await client.get("/query"))
        # The pool dropped the dead connection: the next request gets a fresh one.
        assert (await client.get("/query")).status_code == 200

"""A state-changing request whose client leaves before the answer is cancelled, so its
transaction rolls back instead of committing work that was answered as a failure."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from fastapi import APIRouter, Request
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from keelson.config import KeelsonSettings, LogSettings
from keelson.http import create_app
from keelson.plugins import PluginContainer
from keelson_dev.testing import LiveServer, eventually


class Work:
    """What the route did, seen from the test's thread."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.cancelled = threading.Event()


@pytest.fixture
async def table(test_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(test_database_url)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE IF NOT EXISTS abandoned_work (id text PRIMARY KEY)"))
    yield engine
    await engine.dispose()


@pytest.fixture
def served(test_database_url: str) -> Iterator[tuple[LiveServer, Work]]:
    work = Work()
    router = APIRouter()
    engines: list[AsyncEngine] = []

    @router.post("/work")
    async def do_work(request: Request) -> dict[str, str]:
        body = json.loads(await request.body())
        if not engines:  # made in the server's own loop
            engines.append(create_async_engine(test_database_url))
        try:
            async with engines[0].begin() as conn:
                await conn.execute(
                    text("INSERT INTO abandoned_work (id) VALUES (:id)"), {"id": body["id"]}
                )
                work.entered.set()
                while not work.release.is_set():
                    await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            work.cancelled.set()
            raise
        return {"id": body["id"]}

    settings = KeelsonSettings(service="demo", log=LogSettings(ship_endpoint=None))
    app = create_app(settings, container=PluginContainer(settings), routers=[router])
    with LiveServer(app) as server:
        yield server, work
        work.release.set()


async def stored(engine: AsyncEngine, work_id: str) -> bool:
    async with engine.connect() as conn:
        found = await conn.scalar(
            text("SELECT count(*) FROM abandoned_work WHERE id = :id"), {"id": work_id}
        )
    return bool(found)


async def test_a_request_whose_client_left_is_cancelled_and_commits_nothing(
    served: tuple[LiveServer, Work], table: AsyncEngine
) -> None:
    """Sent: a POST whose handler has inserted a row in an open transaction, then the
    client closes its connection. Holds: the handler is cancelled and the row is not
    committed (before, the handler ran on and committed for nobody)."""
    server, work = served
    work_id = str(uuid.uuid4())
    body = json.dumps({"id": work_id}).encode()
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        b"POST /work HTTP/1.1\r\nHost: demo\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    await writer.drain()
    await asyncio.to_thread(work.entered.wait, 10)
    assert work.entered.is_set()
    writer.close()
    await writer.wait_closed()
    await eventually(work.cancelled.is_set, timeout=5)
    # The handler saw its cancellation after leaving the transaction: rolled back.
    assert not await stored(table, work_id)


async def test_a_request_whose_client_stays_commits(
    served: tuple[LiveServer, Work], table: AsyncEngine
) -> None:
    server, work = served
    work_id = str(uuid.uuid4())
    async with httpx.AsyncClient(base_url=server.url, timeout=15) as client:
        answer = asyncio.create_task(client.post("/work", json={"id": work_id}))
        await asyncio.to_thread(work.entered.wait, 10)
        work.release.set()
        response = await answer
    assert response.status_code == 200, response.text
    assert not work.cancelled.is_set()
    assert await stored(table, work_id)

"""The access log every service writes: one `keelson.access` record per request."""

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import APIRouter

from keelson.config import KeelsonSettings
from keelson.http import create_app
from keelson.logging import record_to_dict, user_id_var
from keelson.plugins import PluginContainer
from keelson.testing import make_settings

router = APIRouter()


@router.get("/things/{thing_id}")
async def get_thing(thing_id: int) -> dict[str, int]:
    user_id_var.set("user-7")  # as the auth dependency binds the caller
    return {"id": thing_id}


@asynccontextmanager
async def client_for(settings: KeelsonSettings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, container=PluginContainer(settings), routers=[router])
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://svc.test") as client:
            yield client


class Shipped(logging.Handler):
    """Keeps each record as the shipper would send it: context bound at emit time."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record_to_dict(record, "things"))


@pytest.fixture
def shipped() -> Iterator[list[dict[str, Any]]]:
    logger = logging.getLogger("keelson.access")
    handler, level = Shipped(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.records
    logger.removeHandler(handler)
    logger.setLevel(level)


async def test_one_record_per_request_with_route_status_and_context(
    shipped: list[dict[str, Any]],
) -> None:
    async with client_for(make_settings(service="things")) as client:
        ok = await client.get("/things/42", headers={"X-Request-ID": "req-abc"})
        missing = await client.get("/nowhere")
        assert (await client.get("/health/live")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200
    assert ok.status_code == 200 and missing.status_code == 404

    first, second = shipped  # probes and /metrics are not logged
    assert first["level"] == "INFO" and first["logger"] == "keelson.access"
    assert first["request_id"] == "req-abc"
    assert first["user_id"] == "user-7"
    assert first["trace_id"]
    assert first["attrs"]["method"] == "GET"
    assert first["attrs"]["route"] == "/things/{thing_id}"  # the template, not the path
    assert first["attrs"]["status"] == 200
    assert first["attrs"]["client_ip"] == "10.1.2.3"
    assert first["attrs"]["duration_ms"] >= 0
    assert second["attrs"]["route"] == "unmatched" and second["attrs"]["status"] == 404
    assert second["request_id"] == missing.headers["x-request-id"]


async def test_switched_off_by_the_setting(shipped: list[dict[str, Any]]) -> None:
    async with client_for(make_settings(service="things", access_log=False)) as client:
        assert (await client.get("/things/1")).status_code == 200
    assert shipped == []

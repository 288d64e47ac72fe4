"""The access log every service writes: one `keelson.access` record per request."""

import logging
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import APIRouter
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from keelson.config import KeelsonSettings
from keelson.http import create_app, exchange
from keelson.logging import record_to_dict, user_id_var
from keelson.plugins import PluginContainer
from keelson_dev.testing import make_settings

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


async def test_the_user_id_a_request_binds_ends_with_it(shipped: list[dict[str, Any]]) -> None:
    # httpx's ASGI transport runs the app in this task: a binding left behind would show here.
    async with client_for(make_settings(service="things")) as client:
        assert (await client.get("/things/1")).status_code == 200
        assert user_id_var.get() is None
        assert (await client.get("/nowhere")).status_code == 404
    assert [r["user_id"] for r in shipped] == ["user-7", None]


async def test_a_user_bound_outside_a_request_is_not_its_user_and_is_kept(
    shipped: list[dict[str, Any]],
) -> None:
    token = user_id_var.set("outer")  # bound by whoever calls the app in this task
    try:
        async with client_for(make_settings(service="things")) as client:
            assert (await client.get("/nowhere")).status_code == 404
            assert user_id_var.get() == "outer"
            assert (await client.get("/things/1")).status_code == 200
            assert user_id_var.get() == "outer"
    finally:
        user_id_var.reset(token)
    assert [r["user_id"] for r in shipped] == [None, "user-7"]


async def test_a_layer_may_write_the_record_its_own_way(shipped: list[dict[str, Any]]) -> None:
    written: list[tuple[str, int, str | None]] = []

    def recorder(scope: Scope, status: int, seconds: float) -> None:
        assert seconds >= 0
        written.append((scope["path"], status, user_id_var.get()))

    class Recording:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
            if scope["type"] == "http":
                exchange(scope).record_with(recorder)
            return self.app(scope, receive, send)

    settings = make_settings(service="things", access_log=False)
    app = create_app(settings, container=PluginContainer(settings), routers=[router])
    app.user_middleware.append(Middleware(Recording))  # inside ServiceMiddleware
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc.test") as client:
            assert (await client.get("/things/3")).status_code == 200
            assert (await client.get("/health/live")).status_code == 200
    # Its record, even with the service's own off, probes included: the layer decides.
    assert written == [("/things/3", 200, "user-7"), ("/health/live", 200, None)]
    assert shipped == []

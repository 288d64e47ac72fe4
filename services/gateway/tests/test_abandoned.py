"""A client that leaves the gateway before the answer: the gateway drops the upstream
exchange, and the upstream cancels the request before it commits."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
from fastapi import APIRouter
from gateway_testkit import (
    ServerThread,
    catalog_ready,
    gateway_settings,
    recorded_as_499,
    running_gateway,
    upstreams_config,
)
from pydantic import BaseModel

from keelson.config import KeelsonSettings, LogSettings
from keelson.http import create_app
from keelson.plugins import PluginContainer
from keelson_dev.testing import eventually


class Order(BaseModel):
    name: str


def slow_upstream(entered: threading.Event, cancelled: threading.Event) -> Any:
    """A service whose POST runs until cancelled (standing in for an open transaction)."""
    router = APIRouter(prefix="/api/v1/logs")

    @router.post("/orders")
    async def place(order: Order) -> dict[str, str]:
        entered.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {"name": order.name}

    settings = KeelsonSettings(service="logs", log=LogSettings(ship_endpoint=None))
    return create_app(settings, container=PluginContainer(settings), routers=[router])


async def test_a_client_leaving_the_gateway_cancels_the_upstream_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Sent: a POST through the gateway whose client goes away while the upstream works on
    it. Holds: the upstream's handler is cancelled (its transaction would roll back) and
    the gateway records a 499; before, the gateway waited for the answer and the upstream
    ran on to its commit."""
    entered, cancelled = threading.Event(), threading.Event()
    upstream = ServerThread(slow_upstream(entered, cancelled), lifespan="on").start()
    try:
        settings = gateway_settings(
            routing=upstreams_config(logs=upstream.url), validation={"enabled": False}
        )
        async with running_gateway(settings) as (app, _):
            await catalog_ready(app, "logs")
            body = json.dumps({"name": "x"}).encode()
            leave = asyncio.Event()
            sent: list[dict[str, Any]] = []
            requested = False

            async def receive() -> dict[str, Any]:
                nonlocal requested
                if not requested:
                    requested = True
                    return {"type": "http.request", "body": body, "more_body": False}
                await leave.wait()
                return {"type": "http.disconnect"}

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": "/api/v1/logs/orders",
                "raw_path": b"/api/v1/logs/orders",
                "query_string": b"",
                "root_path": "",
                "headers": [
                    (b"host", b"gateway.test"),
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
                "client": ("127.0.0.1", 5000),
                "server": ("127.0.0.1", 8000),
            }
            with recorded_as_499(caplog, "/api/v1/logs/orders"):
                call = asyncio.create_task(app(scope, receive, send))
                await asyncio.to_thread(entered.wait, 10)
                assert entered.is_set()
                leave.set()
                await asyncio.wait_for(call, 10)
            await eventually(cancelled.is_set, timeout=10)
        assert not [m for m in sent if m["type"] == "http.response.start"]
    finally:
        upstream.stop()

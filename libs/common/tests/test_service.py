"""A service's entry point: settings checked at start, the standard plugins, the app."""

import inspect
import os
import subprocess
import sys
from typing import Annotated

import httpx
from fastapi import APIRouter, Depends

from keelson.config import BusSettings
from keelson.plugins import Key, Plugin, PluginMetadata
from keelson.service import create_service_app, provided
from keelson_dev.embedded import free_port
from keelson_dev.testing import make_settings

GREETING: Key[str] = Key("greeter.greeting")
Greeting = Annotated[str, Depends(provided(GREETING))]
router = APIRouter()


@router.get("/hello")
async def hello(greeting: Greeting) -> dict[str, str]:
    return {greeting: "world"}


class Greeter(Plugin):
    metadata = PluginMetadata(name="greeter")

    async def initialize(self) -> None:
        self.container.provide(GREETING, "hello")


def test_provided_is_an_async_dependency() -> None:
    # FastAPI runs a plain `def` dependency in a worker thread: a thread hop per request.
    assert inspect.iscoroutinefunction(provided(GREETING))


def test_a_bad_setting_stops_the_service_at_start_naming_it() -> None:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("KEELSON_") and k != "SENTRY_DSN"
    }
    env.update(KEELSON_PORT="eighty", KEELSON_DB__POOL_SIZE="0")
    result = subprocess.run(
        [sys.executable, "-m", "payments_service"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "KEELSON_PORT" in result.stderr and "KEELSON_DB__POOL_SIZE" in result.stderr
    assert "Traceback" not in result.stderr


async def test_create_service_app_wires_the_standard_plugins_and_the_routers() -> None:
    bus = BusSettings(  # the ZeroMQ bus must not reach a suite running on 5555/5556
        zmq_xsub_endpoint=f"tcp://127.0.0.1:{free_port()}",
        zmq_xpub_endpoint=f"tcp://127.0.0.1:{free_port()}",
    )
    settings = make_settings(service="svc", bus=bus)
    app = create_service_app(
        settings, plugins=[Greeter], routers=[router], title="Svc", database=False
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            hello = await client.get("/hello")
            health = (await client.get("/health")).json()
    assert hello.json() == {"hello": "world"}
    assert app.title == "Svc"
    assert set(health["plugins"]) == {"bus", "cache", "greeter"}
    assert health["plugins"]["greeter"]["state"] == "running"

"""Helpers for the gateway's tests: real servers in threads, the gateway in-process."""

import asyncio
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml
from fastapi import FastAPI
from prometheus_client import REGISTRY

from gateway.app import create_app
from gateway.settings import Settings
from gateway.transport import UpstreamTransport
from keelson.config import Environment, LogSettings
from keelson_dev.embedded import free_port
from keelson_dev.testing import eventually


class ServerThread:
    """A real uvicorn server for an ASGI app, in a thread, on a port of its own."""

    def __init__(self, app: Any, port: int | None = None, *, lifespan: str = "off") -> None:
        self.app = app
        self.lifespan = lifespan
        self.port = port or free_port()
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ServerThread":
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_config=None,
            access_log=False,
            lifespan=self.lifespan,
            loop="asyncio",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline + 20 or not self.thread.is_alive():
                raise RuntimeError("upstream server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        assert self.server is not None and self.thread is not None
        self.server.should_exit = True
        self.thread.join(10)


def gateway_settings(
    *, redis_url: str | None = None, trusted_proxy_hops: int = 0, **plugins: dict[str, Any]
) -> Settings:
    # Each plugin can be tested alone: security (which needs tokens) is off unless given.
    plugins.setdefault("security", {"enabled": False})
    values: dict[str, Any] = {
        "env": Environment.TEST,
        "log": LogSettings(ship_endpoint=None),
        "plugins": plugins,
        "redis_url": redis_url,
        "trusted_proxy_hops": trusted_proxy_hops,
        "bus": private_bus(),
    }
    return Settings(**values)


def private_bus() -> dict[str, str]:
    """Bus endpoints of this test's own (never the suite's 5555/5556)."""
    return {
        "zmq_xsub_endpoint": f"tcp://127.0.0.1:{free_port()}",
        "zmq_xpub_endpoint": f"tcp://127.0.0.1:{free_port()}",
    }


def upstreams_config(**urls: str) -> dict[str, Any]:
    """Routing config: every default upstream pointed at a closed port unless given."""
    dead = f"http://127.0.0.1:{free_port()}"
    names = ("auth", "logs", "notifications", "payments")
    return {
        "upstreams": {n: {"url": urls.get(n, dead), "retry_backoff_seconds": 0.01} for n in names}
    }


@asynccontextmanager
async def running_gateway(
    settings: Settings, *, transports: Mapping[str, UpstreamTransport] | None = None
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The real gateway app with its lifespan, and an httpx client that calls it in-process;
    `transports` as `create_app` takes them."""
    app = create_app(settings, transports=transports)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
            yield app, client


class GatewayProcess:
    """`python -m gateway` in a subprocess, configured by a YAML file, on a free port."""

    def __init__(
        self, config_dir: Path, *, env: dict[str, str] | None = None, logs: bool = False
    ) -> None:
        self.port = free_port()
        # `logs=True`: all the process writes is readable from `process.stdout`.
        self.logs = logs
        self.config_dir = config_dir
        self.env = {
            **os.environ,
            "KEELSON_CONFIG_DIR": str(config_dir),
            "KEELSON_ENV": "test",
            "KEELSON_PORT": str(self.port),
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "GatewayProcess":
        return self.launch().wait_ready()

    def launch(self) -> "GatewayProcess":
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway"],
            env=self.env,
            cwd=self.config_dir,
            stdout=subprocess.PIPE if self.logs else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if self.logs else subprocess.PIPE,
        )
        return self

    def wait_ready(self) -> "GatewayProcess":
        assert self.process is not None
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    self.process.stderr.read().decode() if self.process.stderr else ""
                )
            try:
                if httpx.get(self.url + "/health/live", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("gateway process did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def write_config(directory: Path, config: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "keelson.yaml").write_text(yaml.safe_dump(config))
    return directory


async def catalog_ready(app: FastAPI, *names: str) -> None:
    """Wait until the gateway has fetched these upstreams' OpenAPI documents."""
    from gateway.plugins.routing import CATALOG

    catalog = app.state.container.resolve(CATALOG)
    await eventually(lambda: all(catalog.available()[n] for n in names))


async def call_raw(
    app: Any, method: str, raw_path: bytes, body: bytes = b"", headers=()
) -> tuple[int, bytes]:
    """Call the ASGI app with a path exactly as given, as a client on the wire could send it."""
    from urllib.parse import unquote

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw_path.decode()),
        "raw_path": raw_path,
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"gateway.test"), *headers],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict] = []

    async def receive() -> dict:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


async def call_and_leave(
    app: Any, path: str, part: bytes, headers: list[tuple[bytes, bytes]]
) -> list[dict]:
    """POST to the ASGI app as a client that sends `part` of its body and goes away.

    Returns what the app sent back, all of it lost on a real connection.
    """
    messages = [
        {"type": "http.request", "body": part, "more_body": True},
        {"type": "http.disconnect"},
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"gateway.test"), *headers],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0) if len(messages) > 1 else messages[0]

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


@contextmanager
def recorded_as_499(caplog: pytest.LogCaptureFixture, route: str) -> Iterator[None]:
    """Check that the block's one POST to `route` was logged and counted as a 499.

    The counter is process-wide, so the check is on its growth, not its value.
    """
    caplog.set_level(logging.INFO, logger="gateway.access")
    labels = {"method": "POST", "route": route, "service": "gateway"}
    before = REGISTRY.get_sample_value("http_requests_total", {**labels, "status": "499"}) or 0.0
    yield
    [record] = [
        r for r in caplog.records if r.name == "gateway.access" and r.route == labels["route"]
    ]
    assert record.status == 499
    after = REGISTRY.get_sample_value("http_requests_total", {**labels, "status": "499"})
    assert after == before + 1

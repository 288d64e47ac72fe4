"""The app factory against real HTTP: uvicorn on a free port, httpx as the client."""

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send

from keelson.auth import IdentityKey
from keelson.config import IdentitySettings, KeelsonSettings, LogSettings
from keelson.errors import Conflict, TooManyRequests
from keelson.http import KeelsonApp, create_app, exchange
from keelson.metrics import count_business_event
from keelson.plugins import Health, Plugin, PluginContainer, PluginMetadata, PluginState
from keelson.redis_plugin import RedisPlugin
from keelson_dev.embedded import free_port
from keelson_dev.testing import LiveServer, eventually

router = APIRouter()
release = threading.Event()
entered = threading.Event()


class Item(BaseModel):
    name: str
    quantity: int


@router.post("/items", status_code=201)
async def create_item(item: Item) -> Item:
    if item.name == "taken":
        raise Conflict("an item with that name exists")
    if item.name == "busy":
        raise TooManyRequests("slow down", retry_after=7)
    return item


@router.get("/boom")
async def boom() -> None:
    raise RuntimeError("secret internals: password=hunter2")


@router.get("/slow")
async def slow() -> dict[str, str]:
    entered.set()
    await asyncio.to_thread(release.wait, 10)
    return {"status": "finished"}


class Switch(Plugin):
    metadata = PluginMetadata(name="switch")
    healthy = True

    async def health(self) -> Health:
        return Health(ok=Switch.healthy, detail="" if Switch.healthy else "dependency down")


def build_app() -> FastAPI:
    settings = KeelsonSettings(service="demo", log=LogSettings(ship_endpoint=None))
    container = PluginContainer(settings)
    container.register(Switch)
    return create_app(settings, container=container, routers=[router])


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with LiveServer(build_app()) as running:
        yield running


@pytest.fixture
async def client(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url) as c:
        yield c


async def test_request_id_is_echoed_or_made(client: httpx.AsyncClient) -> None:
    given = await client.get("/health/live", headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    made = await client.get("/health/live")
    assert len(made.headers["x-request-id"]) == 32
    hostile = await client.get("/health/live", headers={"X-Request-ID": 'x" onload=alert(1)'})
    assert hostile.headers["x-request-id"] != 'x" onload=alert(1)'


async def test_security_headers(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/live")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert "default-src 'none'" in response.headers["content-security-policy"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/nowhere", None, 404),
        ("DELETE", "/items", None, 405),
        ("POST", "/items", {"name": "x", "quantity": "many"}, 422),
        ("POST", "/items", {"name": "taken", "quantity": 1}, 409),
        ("GET", "/boom", None, 500),
    ],
)
async def test_every_error_is_problem_json(
    client: httpx.AsyncClient, method: str, path: str, body: object, status: int
) -> None:
    response = await client.request(method, path, json=body, headers={"X-Request-ID": "rq-1"})
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status
    assert problem["type"].startswith("https://keelson.dev/problems/")
    assert problem["title"] and problem["detail"]
    assert problem["request_id"] == "rq-1"
    assert "Traceback" not in response.text and "hunter2" not in response.text


async def test_validation_error_names_the_field_and_hides_input(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/items", json={"name": "ok", "quantity": "s3cr3t-value"})
    problem = response.json()
    assert problem["detail"].startswith("quantity:")
    assert problem["errors"][0]["loc"] == ["body", "quantity"]
    assert "s3cr3t-value" not in response.text


async def test_retry_after_from_domain_error(client: httpx.AsyncClient) -> None:
    response = await client.post("/items", json={"name": "busy", "quantity": 1})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"


async def test_readiness_follows_plugin_health(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health/ready")).status_code == 200
    Switch.healthy = False
    try:
        down = await client.get("/health/ready")
        assert down.status_code == 503
        assert down.json()["failing"]["switch"]["detail"] == "dependency down"
        summary = await client.get("/health")
        assert summary.json()["plugins"]["switch"]["healthy"] is False
    finally:
        Switch.healthy = True
    assert (await client.get("/health/live")).status_code == 200


async def test_metrics_by_route_template(client: httpx.AsyncClient) -> None:
    await client.post("/items", json={"name": "a", "quantity": 1})
    text = (await client.get("/metrics")).text
    assert 'http_requests_total{method="POST",route="/items",service="demo",status="201"}' in text
    assert "http_request_duration_seconds_bucket" in text


async def test_a_method_rfc_9110_does_not_define_is_counted_as_other() -> None:
    """uvicorn's parser refuses such methods itself; granian (the gateway's) hands them on."""
    transport = httpx.ASGITransport(app=build_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
        for method in ("BREW", "X-PROBE-1", "X-PROBE-2"):
            assert (await client.request(method, "/items")).status_code == 405
        text = (await client.get("/metrics")).text
    other = 'http_requests_total{method="OTHER",route="/items",service="demo",status="405"}'
    assert f"{other} 3.0" in text
    assert "BREW" not in text and "X-PROBE" not in text


async def test_business_events_are_counted_and_exported(client: httpx.AsyncClient) -> None:
    count_business_event("demo", "order", outcome="placed")
    count_business_event("demo", "order", outcome="placed", n=2)
    text = (await client.get("/metrics")).text
    assert 'business_events_total{event="order",outcome="placed",service="demo"} 3.0' in text
    assert "db_pool_connections_in_use" in text  # the family exists before any engine


async def test_a_real_dependency_down_turns_readiness_503() -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    settings = KeelsonSettings(
        service="demo", redis_url=dead_redis, log=LogSettings(ship_endpoint=None)
    )
    container = PluginContainer(settings)
    container.register(RedisPlugin)  # connects lazily: starting succeeds, pinging cannot
    app = create_app(settings, container=container)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://demo") as c:
            ready = await c.get("/health/ready")
            live = await c.get("/health/live")
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable"
    assert ready.json()["failing"]["redis"]["healthy"] is False
    assert live.status_code == 200


async def test_a_500_keeps_the_request_id_and_security_headers(client: httpx.AsyncClient) -> None:
    response = await client.get("/boom", headers={"X-Request-ID": "rq-500"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "rq-500"
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_a_405_names_the_allowed_methods(client: httpx.AsyncClient) -> None:
    response = await client.delete("/items")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


async def test_lifespan_shutdown_waits_for_in_flight_requests_and_refuses_readiness() -> None:
    release.clear()
    entered.clear()
    app = build_app()
    container: PluginContainer = app.state.container
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as c:
        shutdown: asyncio.Task[None] | None = None
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(app.router.lifespan_context(app))
            pending = asyncio.create_task(c.get("/slow"))
            assert await asyncio.to_thread(entered.wait, 10)
            shutdown = asyncio.create_task(stack.aclose())  # runs the lifespan's exit
            await eventually(lambda: app.state.draining)
            ready = await c.get("/health/ready")
            assert ready.status_code == 503 and ready.json() == {"status": "draining"}
            assert container.state("switch") is PluginState.RUNNING  # not stopped under it
            assert not shutdown.done()
            release.set()
            response = await pending
            await shutdown
    assert response.status_code == 200 and response.json() == {"status": "finished"}
    assert container.state("switch") is PluginState.STOPPED


def _refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return True
    return False


async def test_uvicorn_shutdown_finishes_the_request_in_flight() -> None:
    release.clear()
    entered.clear()
    with LiveServer(build_app()) as running:
        async with httpx.AsyncClient(base_url=running.url, timeout=10) as c:
            pending = asyncio.create_task(c.get("/slow"))
            assert await asyncio.to_thread(entered.wait, 10)
            running.server.should_exit = True
            # Released only once the server has stopped listening: shutdown is under way.
            await eventually(lambda: _refuses_connections(running.port))
            release.set()
            response = await pending
        assert response.status_code == 200
        assert response.json() == {"status": "finished"}


async def test_a_failing_startup_hook_stops_the_container_it_started() -> None:
    settings = KeelsonSettings(service="demo", log=LogSettings(ship_endpoint=None))
    container = PluginContainer(settings)
    container.register(Switch)

    async def broken_hook(app: FastAPI) -> None:
        raise RuntimeError("cannot compose")

    app = create_app(settings, container=container, on_startup=[broken_hook])
    with pytest.raises(RuntimeError, match="cannot compose"):
        async with app.router.lifespan_context(app):
            pass
    assert container.state("switch") is PluginState.STOPPED


async def test_failure_text_stays_private_outside_dev(caplog: pytest.LogCaptureFixture) -> None:
    settings = KeelsonSettings(
        service="demo",
        env="prod",
        master_key="prod-master-key-0123456789abcdef0123456789",
        log=LogSettings(ship_endpoint=None),
        identity=IdentitySettings(public_keys=IdentityKey.generate().public_keys),
    )
    container = PluginContainer(settings)
    container.register(Switch)
    app = create_app(settings, container=container, routers=[router])
    Switch.healthy = False
    try:
        with LiveServer(app) as running, caplog.at_level("WARNING", logger="keelson.health"):
            async with httpx.AsyncClient(base_url=running.url) as c:
                ready = await c.get("/health/ready")
                summary = await c.get("/health")
    finally:
        Switch.healthy = True
    assert ready.status_code == 503
    assert ready.json()["failing"]["switch"]["healthy"] is False
    assert "dependency down" not in ready.text
    assert "dependency down" not in summary.text
    assert "dependency down" in caplog.text


def _lane_front(own_stack: ASGIApp) -> ASGIApp:
    """A raw ASGI layer in front of the app's own stack: answers /lane itself, adding and
    enforcing headers through the Exchange; everything else goes on to FastAPI."""

    async def front(scope: Scope, receive: Receive, send: Send) -> None:
        if not scope["path"].startswith("/lane"):
            await own_stack(scope, receive, send)
            return
        assert "app" not in scope  # FastAPI's machinery never saw it
        ex = exchange(scope)
        ex.add_headers([(b"x-lane", b"yes")])
        ex.enforce_headers({b"x-frame-options": b"SAMEORIGIN"})
        if scope["path"] == "/lane/boom":
            raise RuntimeError("secret internals: password=hunter2")
        headers = [(b"content-type", b"text/plain"), (b"x-frame-options", b"ALLOW")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"lane"})

    return front


def test_a_front_serves_under_keelson_middleware_before_fastapis_stack(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = KeelsonSettings(service="demo", log=LogSettings(ship_endpoint=None))
    app = create_app(
        settings, container=PluginContainer(settings), routers=[router], front=_lane_front
    )
    assert isinstance(app, KeelsonApp)
    with LiveServer(app) as server:
        lane = httpx.get(server.url + "/lane/x", headers={"X-Request-ID": "lane-1"})
        assert lane.text == "lane"
        assert lane.headers["x-request-id"] == "lane-1"
        assert lane.headers["x-lane"] == "yes"
        # Enforced: the app's own value is replaced, not doubled.
        assert lane.headers.get_list("x-frame-options") == ["SAMEORIGIN"]
        assert lane.headers["x-content-type-options"] == "nosniff"
        boom = httpx.get(server.url + "/lane/boom", headers={"X-Request-ID": "lane-2"})
        assert boom.status_code == 500
        assert boom.headers["content-type"] == "application/problem+json"
        assert boom.json()["request_id"] == "lane-2"
        assert "hunter2" not in boom.text
        assert boom.headers["x-lane"] == "yes"
        # Everything else still takes FastAPI's routes, under the same middleware.
        live = httpx.get(server.url + "/health/live", headers={"X-Request-ID": "own-1"})
        assert live.status_code == 200 and live.headers["x-request-id"] == "own-1"
        # A route's exception: answered 500 by FastAPI's handler, logged once.
        caplog.clear()
        crash = httpx.get(server.url + "/boom", headers={"X-Request-ID": "own-2"})
        assert crash.status_code == 500
        assert crash.json()["request_id"] == "own-2"
        assert crash.json()["type"] == "https://keelson.dev/problems/internal"
        assert "hunter2" not in crash.text
        errors = [r.name for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors == ["keelson.http"]
        metrics = httpx.get(server.url + "/metrics").text
        assert 'route="unmatched",service="demo",status="500"' in metrics


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /health/live HTTP/1.1\r\nConnection: close\r\n\r\n", 400),
        (b"GET /health/live HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n", 400),
        (b"GET /health/live HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 200),
        (b"GET /health/live HTTP/1.0\r\n\r\n", 200),  # HTTP/1.0 needs no Host
        # granian reports a missing Host as an empty one: empty counts as missing.
        (b"GET /health/live HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n", 400),
        # RFC 9112, 3.2: a Host whose value is no host is a 400 too.
        (b"GET /health/live HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n", 400),
        (b"GET /health/live HTTP/1.1\r\nHost: a/b@c\r\nConnection: close\r\n\r\n", 400),
        (b"GET /health/live HTTP/1.1\r\nHost: caf\xc3\xa9\r\nConnection: close\r\n\r\n", 400),
        (
            b"GET /health/live HTTP/1.1\r\nHost: api.example.com:8443\r\nConnection: close\r\n\r\n",
            200,
        ),
        (b"GET /health/live HTTP/1.1\r\nHost: [::1]:8000\r\nConnection: close\r\n\r\n", 200),
    ],
    ids=[
        "missing",
        "twice",
        "once",
        "http/1.0",
        "empty",
        "space",
        "path",
        "not-ascii",
        "name-and-port",
        "ipv6",
    ],
)
def test_an_http_11_request_needs_exactly_one_host(head: bytes, status: int) -> None:
    settings = KeelsonSettings(service="demo", log=LogSettings(ship_endpoint=None))
    app = create_app(settings, container=PluginContainer(settings))
    with LiveServer(app) as server, socket.create_connection(("127.0.0.1", server.port)) as raw:
        raw.sendall(head)
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert int(status_line.split()[1]) == status, answer
    if status == 400:
        assert b"content-type: application/problem+json" in rest.lower()

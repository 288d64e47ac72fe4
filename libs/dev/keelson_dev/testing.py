"""Pytest plugin: a real PostgreSQL database and a real Redis for each test session.

`KEELSON_TEST_DATABASE_URL` / `KEELSON_TEST_REDIS_URL` name servers to use; without them,
embedded ones are started in a temporary folder. Each session gets a database of its own
(dropped at the end) and a flushed Redis database.

A service's conftest builds its fixtures from the helpers here: `migrated` (its schema on
a database), `schema_engine` (an engine on that schema), `running_app` / `asgi_client`
(its app in-process, with or without the lifespan), `LiveServer` / `ServiceProcess` /
`gateway_process` (on a real port), and `offline_auth_plugin` (for apps whose tests sign
no tokens).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar, overload

import httpx
import pytest
from prometheus_client import Counter
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette

from keelson.config import Environment, KeelsonSettings, LogSettings
from keelson.db import create_engine, migrate, migrations_dir, plain_url
from keelson_dev.embedded import EmbeddedPostgres, EmbeddedValkey, free_port
from keelson_dev.suite import SERVICES

__all__ = [
    "LiveServer",
    "ServiceProcess",
    "asgi_client",
    "counted",
    "eventually",
    "fresh_database",
    "gateway_process",
    "make_settings",
    "migrated",
    "offline_auth_plugin",
    "postgres_server_url",
    "redis_url",
    "removing_new_redis_keys",
    "running_app",
    "schema_engine",
    "test_database_url",
]


_T = TypeVar("_T")
_Settings = TypeVar("_Settings", bound=KeelsonSettings)


async def eventually(
    check: Callable[[], _T | Awaitable[_T]], *, timeout: float = 10.0, interval: float = 0.02
) -> _T:
    """Poll `check` (sync or async) until it returns something truthy; return that.

    Raises AssertionError at the deadline: tests synchronise on a condition, never a sleep.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            name = getattr(check, "__name__", "condition")
            raise AssertionError(f"{name} not met within {timeout}s (last: {result!r})")
        await asyncio.sleep(interval)


def counted(counter: Counter, *labels: str) -> float:
    """What `counter` has counted for `labels` (0 before its first count), read through
    prometheus_client's public `collect()`."""
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and tuple(sample.labels.values()) == labels:
                return float(sample.value)
    return 0.0


class LiveServer:
    """An ASGI app served by uvicorn on a free port in a thread, lifespan included, with
    the protocol and loop services run (httptools, uvloop)."""

    def __init__(self, app: Any, *, graceful_seconds: int = 5, keep_alive_seconds: int = 5) -> None:
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=self.port,
                loop="uvloop",
                http="httptools",
                log_config=None,
                lifespan="on",
                timeout_graceful_shutdown=graceful_seconds,
                timeout_keep_alive=keep_alive_seconds,
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            self.thread.join(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)


class ServiceProcess:
    """`python -m <package>` on a free port, as the suite runs it; its stderr goes to `log`.

    The environment is the test's own without `KEELSON_*`, a test environment with a
    private bus (never the suite's 5555/5556) and a spill folder in `workdir`, then `env`.
    """

    def __init__(self, package: str, workdir: Path, env: Mapping[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {k: v for k, v in os.environ.items() if not k.startswith("KEELSON_")}
        environment.update(
            KEELSON_ENV="test",
            KEELSON_PORT=str(self.port),
            KEELSON_LOG__SPILL_DIR=str(workdir / f"spill-{package}"),
            KEELSON_BUS__ZMQ_XSUB_ENDPOINT=f"tcp://127.0.0.1:{free_port()}",
            KEELSON_BUS__ZMQ_XPUB_ENDPOINT=f"tcp://127.0.0.1:{free_port()}",
        )
        environment.update(env or {})  # may replace any of the above
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / f"{package}-{self.port}.log"
        with self.log.open("wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", package],
                env=environment,
                cwd=workdir,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    async def wait_for(self, probe: str = "/health/ready", *, timeout: float = 60) -> None:
        """Until `probe` answers 200; fails at once, with the log's tail, if the process ends."""
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:

            async def answers() -> bool:
                assert self.process.poll() is None, self.log.read_text()[-3000:]
                try:
                    return (await client.get(probe)).status_code == 200
                except httpx.TransportError:
                    return False

            # Annotated: mypy cannot infer eventually's type from a coroutine function.
            answered: bool = await eventually(answers, timeout=timeout, interval=0.1)
            assert answered

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM, and SIGKILL if it has not ended within `timeout` seconds."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait()

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, nothing is flushed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()


def gateway_process(
    workdir: Path,
    upstreams: Mapping[str, str],
    *,
    redis_url: str,
    env: Mapping[str, str] | None = None,
) -> ServiceProcess:
    """`python -m gateway` routing to `upstreams` (service name → URL; a service left out
    is routed to a port nothing listens on), with rate-limit counters of its own on
    `redis_url` and no log shipping; then `env`."""
    nowhere = f"http://127.0.0.1:{free_port()}"
    routes = {
        service.name: {"url": upstreams.get(service.name, nowhere)}
        for service in SERVICES
        if service.name != "gateway"
    }
    plugins = {
        "routing": {"upstreams": routes},
        "rate_limiting": {"key_prefix": f"test-gateway-{uuid.uuid4().hex[:6]}"},
    }
    environment = {
        "KEELSON_REDIS_URL": redis_url,
        "KEELSON_LOG__SHIP_ENDPOINT": "",
        "KEELSON_PLUGINS": json.dumps(plugins),
    }
    environment.update(env or {})
    return ServiceProcess("gateway", workdir, environment)


@pytest.fixture(scope="session")
def postgres_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server URL (database `postgres`) on which the session may create databases."""
    configured = os.environ.get("KEELSON_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    base = Path(tempfile.mkdtemp(prefix="keelson-pg-"))
    server = EmbeddedPostgres(base / "data", free_port())
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def fresh_database(server_url: str, *, prefix: str = "keelson_test") -> Iterator[str]:
    """Create a uniquely named database on `server_url`, yield its asyncpg URL, then drop it."""
    import asyncpg

    server = make_url(server_url)
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin_dsn = plain_url(server_url)

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    url = server.set(drivername="postgresql+asyncpg", database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def migrated(database_url: str, *packages: str) -> str:
    """Upgrade `database_url` to head with each service package's migrations, in order;
    return the URL. Upgrading a schema already at head changes nothing."""
    for package in packages:
        migrate(migrations_dir(package), database_url)
    return database_url


@asynccontextmanager
async def schema_engine(
    settings_cls: type[KeelsonSettings], database_url: str, *, schema: str
) -> AsyncIterator[AsyncEngine]:
    """An engine on `schema` of `database_url`, pooled as `settings_cls` says by default;
    disposed on leaving."""
    engine = create_engine(make_settings(settings_cls, database_url=database_url), schema=schema)
    try:
        yield engine
    finally:
        await engine.dispose()


@asynccontextmanager
async def asgi_client(
    app: Starlette, *, base_url: str, client_ip: str | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client that calls `app` in-process (its lifespan is not run), as from
    `client_ip` when given (httpx's own address otherwise)."""
    if client_ip is None:
        transport = httpx.ASGITransport(app=app)
    else:
        transport = httpx.ASGITransport(app=app, client=(client_ip, 40000))
    async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
        yield client


@asynccontextmanager
async def running_app(
    app: Starlette, *, base_url: str, client_ip: str | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """`app` with its lifespan started (its workers and relays too), and an `asgi_client`."""
    async with (
        app.router.lifespan_context(app),
        asgi_client(app, base_url=base_url, client_ip=client_ip) as client,
    ):
        yield client


def offline_auth_plugin() -> dict[str, dict[str, str]]:
    """`plugins` settings whose auth plugin fetches its JWKS from a port nothing listens on:
    for an app whose tests sign no tokens, or sign them with a key it is given otherwise."""
    return {"auth": {"jwks_url": f"http://127.0.0.1:{free_port()}/jwks.json"}}


@pytest.fixture(scope="session")
def test_database_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh database for this session, as a `postgresql+asyncpg://` URL."""
    with fresh_database(postgres_server_url) as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis URL whose database is flushed at the start of the session."""
    import redis

    configured = os.environ.get("KEELSON_TEST_REDIS_URL")
    process = None
    if configured:
        url = configured
    else:
        base = Path(tempfile.mkdtemp(prefix="keelson-valkey-"))
        server = EmbeddedValkey(base, free_port())
        process = server.start()
        url = server.url
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    try:
        yield url
    finally:
        if process is not None:
            EmbeddedValkey.stop(process)


@contextmanager
def removing_new_redis_keys(url: str) -> Iterator[None]:
    """On leaving, delete the keys made in Redis meanwhile: login throttles and lockouts,
    streams, counters of the processes a test ran, which would otherwise reach the tests
    after it on the same database (a locked-out 127.0.0.1, say)."""
    import redis

    client = redis.Redis.from_url(url)
    before = set(client.scan_iter(count=1000))
    try:
        yield
    finally:
        made = set(client.scan_iter(count=1000)) - before
        if made:
            client.delete(*made)
        client.close()


@overload
def make_settings(**values: Any) -> KeelsonSettings: ...
@overload
def make_settings(cls: type[_Settings], **values: Any) -> _Settings: ...
def make_settings(cls: type[KeelsonSettings] = KeelsonSettings, **values: Any) -> KeelsonSettings:
    """Test settings of class `cls`: no log shipping unless asked, test environment."""
    values.setdefault("env", Environment.TEST)
    values.setdefault("log", LogSettings(ship_endpoint=None))
    return cls(**values)


@pytest.fixture
def settings_factory(test_database_url: str, redis_url: str) -> Callable[..., KeelsonSettings]:
    def factory(cls: type[KeelsonSettings] = KeelsonSettings, **values: Any) -> KeelsonSettings:
        values.setdefault("database_url", test_database_url)
        values.setdefault("redis_url", redis_url)
        return make_settings(cls, **values)

    return factory

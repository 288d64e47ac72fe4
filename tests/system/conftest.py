"""The whole suite, started the `keelson up` way on the test PostgreSQL and Redis, once for
all of `tests/system/`, for tests that attack or disturb it from outside."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from keelson.db import plain_url
from keelson_dev.embedded import free_port
from keelson_dev.suite import SERVICES, Layout, free_port_block, readiness
from keelson_dev.supervision import Supervisor
from keelson_dev.testing import fresh_database, removing_new_redis_keys

KEELSON = Path(sys.executable).parent / "keelson"
READY_TIMEOUT = 120.0
ADMIN_EMAIL = "system-admin@example.com"
ADMIN_PASSWORD = "granite otters whistle slowly"
HEAD_TIMEOUT = 3.0
BODY_TIMEOUT = 3.0
MAX_HEAD_BYTES = 32_768


@dataclass
class RunningSuite:
    root: Path
    base_port: int
    zmq_base_port: int
    output: Path
    process: subprocess.Popen[bytes]
    database_url: str = ""
    _admin: dict[str, str] | None = None
    _users: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)

    def url(self, name: str) -> str:
        offset = next(s.port_offset for s in SERVICES if s.name == name)
        return f"http://127.0.0.1:{self.base_port + offset}"

    @property
    def gateway(self) -> str:
        return self.url("gateway")

    @property
    def log_intake(self) -> str:
        return f"tcp://127.0.0.1:{self.zmq_base_port + 2}"

    @property
    def supervisor(self) -> Supervisor:
        return Supervisor.from_config(self.root / ".keelson" / "supervisord.conf")

    @property
    def mail_dir(self) -> Path:
        return self.root / ".keelson" / "mail"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.gateway, timeout=15)

    def login(self, email: str, password: str) -> dict[str, str]:
        """A bearer header for the account. The cases share one client address, whose
        login budget (10 a minute) some of them spend on purpose: a 429 is waited out as
        its Retry-After says, up to the budget's minute and a half."""
        deadline = time.monotonic() + 90
        with self.client() as client:
            while True:
                response = client.post(
                    "/api/v1/auth/login", json={"email": email, "password": password}
                )
                if response.status_code != 429 or time.monotonic() > deadline:
                    break
                time.sleep(float(response.headers.get("retry-after", "1")))
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}

    def user(self, name: str) -> tuple[str, dict[str, str]]:
        """A registered user's id and bearer header, made once per run for `name` (most
        cases need someone, not someone new: fewer logins from the shared address)."""
        if name not in self._users:
            self._users[name] = self.new_user()
        return self._users[name]

    def new_user(self) -> tuple[str, dict[str, str]]:
        """A registered user's id and bearer header."""
        email = f"user-{uuid.uuid4().hex[:10]}@example.com"
        with self.client() as client:
            registered = client.post(
                "/api/v1/auth/register", json={"email": email, "password": ADMIN_PASSWORD}
            )
            assert registered.status_code == 202, registered.text  # says nothing, by design
            bearer = self.login(email, ADMIN_PASSWORD)
            me = client.get("/api/v1/auth/me", headers=bearer)
        assert me.status_code == 200, me.text
        return me.json()["id"], bearer

    def merged_openapi(self) -> dict[str, Any]:
        """The gateway's merged OpenAPI once it holds every upstream's operations (an
        upstream that was not up when the gateway first asked is merged in later)."""
        wanted = ("/api/v1/auth/", "/api/v1/logs", "/api/v1/notifications", "/api/v1/payments/")
        deadline = time.monotonic() + READY_TIMEOUT
        with self.client() as client:
            while True:
                document: dict[str, Any] = client.get("/openapi.json").json()
                paths = list(document.get("paths", {}))
                if all(any(p.startswith(w) for p in paths) for w in wanted):
                    return document
                if time.monotonic() > deadline:
                    pytest.fail(f"the merged OpenAPI lacks an upstream: {paths}")
                time.sleep(0.5)

    def admin(self) -> dict[str, str]:
        """The admin's bearer header, logged in once (login budgets are per address)."""
        if self._admin is None:
            self._admin = self.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        return self._admin


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends on `sock` until it closes the connection."""
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except ConnectionResetError:
        pass
    return answer


def _ready(layout: Layout) -> bool:
    return all(code == 200 for code in readiness(layout).values())


@pytest.fixture(scope="package")
def system_database(postgres_server_url: str) -> Iterator[str]:
    with fresh_database(postgres_server_url, prefix="keelson_system") as url:
        yield plain_url(url)


@contextmanager
def launched(root: Path, env: dict[str, str], database_url: str) -> Iterator[RunningSuite]:
    """`keelson up` in `root` with the test's environment (no `KEELSON_*`) and `env`, until
    every service answers ready; SIGTERM at the end."""
    base_port = free_port_block(len(SERVICES) + 3)
    zmq_base_port = base_port + len(SERVICES)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("KEELSON_")}
    environment.update(
        NO_COLOR="1",
        KEELSON_ADMIN_EMAIL=ADMIN_EMAIL,
        KEELSON_ADMIN_PASSWORD=ADMIN_PASSWORD,
        KEELSON_UP_POSTGRES_PORT=str(free_port()),
        KEELSON_UP_VALKEY_PORT=str(free_port()),
        # Not the default 58025: another suite on this machine would get our mail.
        KEELSON_UP_SMTP_PORT=str(free_port()),
        # The gateway's connection limits, short so that the slow-client cases run quickly.
        KEELSON_CONNECTIONS__HEAD_TIMEOUT_SECONDS=str(HEAD_TIMEOUT),
        KEELSON_CONNECTIONS__BODY_TIMEOUT_SECONDS=str(BODY_TIMEOUT),
        KEELSON_CONNECTIONS__MAX_HEAD_BYTES=str(MAX_HEAD_BYTES),
    )
    environment.update(env)
    output = root / "up.log"
    command = [str(KEELSON), "up", "--root", str(root), "--base-port", str(base_port)]
    command += ["--zmq-base-port", str(zmq_base_port), "--timeout", str(READY_TIMEOUT)]
    with output.open("ab") as out:
        process = subprocess.Popen(
            command, cwd=root, env=environment, stdout=out, stderr=subprocess.STDOUT
        )
    running = RunningSuite(root, base_port, zmq_base_port, output, process, database_url)
    layout = Layout(root, root / ".keelson", base_port=base_port, zmq_base_port=zmq_base_port)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not _ready(layout):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the suite did not become ready:\n{output.read_text()[-4000:]}")
            time.sleep(0.2)
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(90)
            except subprocess.TimeoutExpired:
                process.kill()


# Package scope: the suite stops, and the Redis keys it made (login throttles, streams) are
# removed, before the tests outside `tests/system/` run on the same Redis.
@pytest.fixture(scope="package")
def suite(
    system_database: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningSuite]:
    root = tmp_path_factory.mktemp("system")
    env = {"KEELSON_DATABASE_URL": system_database, "KEELSON_REDIS_URL": redis_url}
    with removing_new_redis_keys(redis_url), launched(root, env, system_database) as running:
        yield running

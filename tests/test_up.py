"""`keelson up` as a real process: a killed service comes back, nothing outlives a stop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import psutil
import pytest

from keelson.auth import Principal, identity_key, sign_identity
from keelson.config import KeelsonSettings
from keelson.db import plain_url
from keelson.keys import KeyManager
from keelson_dev.embedded import free_port
from keelson_dev.mailsink import read_mailbox
from keelson_dev.suite import SERVICES, Layout, free_port_block, port_in_use, readiness
from keelson_dev.supervision import (
    ProcessState,
    Program,
    Supervisor,
    pid_alive,
    render_config,
    socket_path,
)
from keelson_dev.testing import fresh_database, removing_new_redis_keys

KEELSON = Path(sys.executable).parent / "keelson"
READY_TIMEOUT = 90.0

pytestmark = pytest.mark.timeout(240)


@dataclass
class Suite:
    process: subprocess.Popen[bytes]
    root: Path
    base_port: int
    log: Path

    @property
    def supervisor(self) -> Supervisor:
        return Supervisor.from_config(self.root / ".keelson" / "supervisord.conf")

    def url(self, name: str) -> str:
        offset = next(service.port_offset for service in SERVICES if service.name == name)
        return f"http://127.0.0.1:{self.base_port + offset}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def poll(self, what: str, condition: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                pytest.fail(f"keelson up exited ({self.process.returncode}):\n{self.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{what} not reached in {timeout}s:\n{self.output()}")
            time.sleep(0.2)

    def status(self, name: str, path: str) -> int | None:
        try:
            return httpx.get(f"{self.url(name)}{path}", timeout=2).status_code
        except httpx.HTTPError:
            return None

    def all_ready(self) -> bool:
        layout = Layout(self.root, self.root / ".keelson", base_port=self.base_port)
        return all(code == 200 for code in readiness(layout).values())

    def tree(self) -> dict[int, float]:
        """`keelson up` and every process under it, by pid, with its creation time."""
        parent = psutil.Process(self.process.pid)
        processes = [parent, *parent.children(recursive=True)]
        return {p.pid: p.create_time() for p in processes}


@pytest.fixture
def start_suite(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Suite]]:
    started: list[Suite] = []

    def start(extra_env: dict[str, str]) -> Suite:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEELSON_")}
        env.update(NO_COLOR="1", KEELSON_PG_FSYNC_OFF="1", **extra_env)
        # One block for the HTTP ports and the three ZeroMQ ports after them: two blocks
        # drawn apart could overlap, and a service would find its port taken.
        base_port = free_port_block(len(SERVICES) + 3)
        log = tmp_path / "up.log"
        command = [
            str(KEELSON),
            "up",
            "--root",
            str(tmp_path),
            "--base-port",
            str(base_port),
            "--zmq-base-port",
            str(base_port + len(SERVICES)),
            "--timeout",
            str(READY_TIMEOUT),
        ]
        # Ports of the embedded servers through the environment, the rest as flags.
        env["KEELSON_UP_POSTGRES_PORT"] = str(free_port())
        env["KEELSON_UP_VALKEY_PORT"] = str(free_port())
        env["KEELSON_UP_SMTP_PORT"] = str(free_port())
        with log.open("ab") as out:
            process = subprocess.Popen(
                command, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        suite = Suite(process, tmp_path, base_port, log)
        started.append(suite)
        return suite

    yield start
    for suite in started:
        if suite.process.poll() is None:
            leftovers = suite.tree()
            suite.process.terminate()
            try:
                suite.process.wait(60)
            except subprocess.TimeoutExpired:
                for pid in leftovers:
                    if psutil.pid_exists(pid):
                        psutil.Process(pid).kill()


def _survivors(snapshot: dict[int, float]) -> list[int]:
    """The pids of `snapshot` still alive as the same process (same creation time)."""
    alive = []
    for pid, created in snapshot.items():
        try:
            process = psutil.Process(pid)
            if process.create_time() == created and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            continue
    return alive


def test_embedded_suite_restarts_a_killed_service_and_stops_clean(
    start_suite: Callable[[dict[str, str]], Suite],
) -> None:
    suite = start_suite({})
    suite.poll("all five ready", suite.all_ready, READY_TIMEOUT)
    assert (suite.root / ".keelson" / "postgres" / "PG_VERSION").exists()
    names = {p.name for p in suite.supervisor.processes()}
    assert names == {"postgres", "valkey", "mail", *(service.name for service in SERVICES)}

    email = f"up-{uuid.uuid4().hex[:8]}@example.com"
    registered = httpx.post(
        suite.url("gateway") + "/api/v1/auth/register",
        json={"email": email, "password": "plum tractors sing quietly"},
        timeout=10,
    )
    assert registered.status_code == 202, registered.text

    def mailed() -> bool:
        subjects = {
            e.subject for e in read_mailbox(suite.root / ".keelson" / "mail") if e.to == email
        }
        return {"Welcome to Keelson", "Confirm your email address"} <= subjects

    suite.poll("welcome and verification mail in .keelson/mail", mailed, READY_TIMEOUT)

    before = {p.name: p.pid for p in suite.supervisor.processes()}
    os.kill(before["payments"], signal.SIGKILL)

    def payments_back() -> bool:
        info = suite.supervisor.process("payments")
        for other in ("gateway", "auth", "logs", "notifications"):
            assert suite.status(other, "/health/live") == 200, f"{other} stopped serving"
        return (
            info.pid not in (0, before["payments"])
            and info.state is ProcessState.RUNNING
            and suite.status("payments", "/health/ready") == 200
        )

    suite.poll("payments restarted and ready", payments_back, READY_TIMEOUT)
    after = {p.name: p.pid for p in suite.supervisor.processes()}
    assert {k: v for k, v in after.items() if k != "payments"} == {
        k: v for k, v in before.items() if k != "payments"
    }

    snapshot = suite.tree()
    assert len(snapshot) >= 9  # keelson up, supervisord, postgres (+ its workers), valkey, five
    suite.process.send_signal(signal.SIGTERM)
    assert suite.process.wait(60) == 0
    assert _survivors(snapshot) == []
    assert not port_in_use(suite.base_port)
    assert not (suite.root / ".keelson" / "supervisor.sock").exists()


@pytest.fixture
def given_database(postgres_server_url: str) -> Iterator[str]:
    """A database of its own on the test server, for `keelson up` to migrate."""
    with fresh_database(postgres_server_url, prefix="keelson_up") as url:
        yield plain_url(url)


@pytest.fixture
def given_redis(redis_url: str) -> Iterator[str]:
    """The session's Redis; keys the suite leaves (streams, consumer groups) are removed."""
    with removing_new_redis_keys(redis_url):
        yield redis_url


def assert_first_token_is_accepted_everywhere(suite: Suite) -> None:
    """The first token minted once the suite is ready verifies in every service that checks.

    A service that reported ready before it held auth's signing keys refused such a token
    with 401 "unknown signing key" for up to its refetch interval.
    """
    email = f"first-{uuid.uuid4().hex[:8]}@example.com"
    password = "plum tractors sing quietly"
    with httpx.Client(base_url=suite.url("gateway"), timeout=10) as client:
        registered = client.post(
            "/api/v1/auth/register", json={"email": email, "password": password}
        )
        assert registered.status_code == 202, registered.text
        login = client.post("/api/v1/auth/login", json={"email": email, "password": password})
        assert login.status_code == 200, login.text
        bearer = {"Authorization": f"Bearer {login.json()['access_token']}"}
        me = client.get("/api/v1/auth/me", headers=bearer)
        assert me.status_code == 200, me.text
        # Through the gateway (which verifies) and straight to the log service (which
        # verifies again): a user who is not an admin is refused for the role, not the key.
        for url in (f"{suite.url('gateway')}/api/v1/logs", f"{suite.url('logs')}/api/v1/logs"):
            refused = client.get(url, headers=bearer)
            assert refused.status_code == 403, (url, refused.text)


def assert_the_development_key_forges_nothing(suite: Suite) -> None:
    """The suite runs on a master key of its own, so the public development constant signs
    no identity the services believe."""
    key_file = suite.root / ".keelson" / "master.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    development = KeelsonSettings().master_key.get_secret_value()
    assert key_file.read_text().strip() != development
    forged = sign_identity(
        Principal(user_id="attacker", roles=frozenset({"admin"})),
        identity_key(KeyManager(development)),
    )
    # Nor does the suite's own master key, which every service holds: the identity key's
    # private half is the gateway's alone (a file of its own, mode 0600).
    identity_file = suite.root / ".keelson" / "identity.key"
    assert stat.S_IMODE(identity_file.stat().st_mode) == 0o600
    from_master = sign_identity(
        Principal(user_id="attacker", roles=frozenset({"admin"})),
        identity_key(KeyManager(key_file.read_text().strip())),
    )
    for headers in (forged, from_master):
        for name, path in (("auth", "/api/v1/auth/users"), ("logs", "/api/v1/logs")):
            response = httpx.get(f"{suite.url(name)}{path}", headers=headers, timeout=10)
            assert response.status_code == 401, (name, response.text)


def test_given_servers_are_used_and_down_stops_everything(
    start_suite: Callable[[dict[str, str]], Suite], given_database: str, given_redis: str
) -> None:
    suite = start_suite({"KEELSON_DATABASE_URL": given_database, "KEELSON_REDIS_URL": given_redis})
    suite.poll("all five ready", suite.all_ready, READY_TIMEOUT)
    assert_first_token_is_accepted_everywhere(suite)
    assert_the_development_key_forges_nothing(suite)
    names = {p.name for p in suite.supervisor.processes()}
    assert names == {"mail", *(service.name for service in SERVICES)}
    assert not (suite.root / ".keelson" / "postgres").exists()

    async def versioned_schemas() -> set[str]:
        conn = await asyncpg.connect(given_database)
        try:
            rows = await conn.fetch(
                "SELECT table_schema FROM information_schema.tables"
                " WHERE table_name = 'alembic_version'"
            )
        finally:
            await conn.close()
        return {row["table_schema"] for row in rows}

    expected = {"gateway", "auth", "logs", "notifications", "payments"}
    assert asyncio.run(versioned_schemas()) >= expected

    snapshot = suite.tree()
    down = subprocess.run(
        [str(KEELSON), "down", "--root", str(suite.root)],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert down.returncode == 0, down.stdout + down.stderr
    assert "stopped" in down.stdout
    assert suite.process.wait(30) == 0
    assert _survivors(snapshot) == []
    status = subprocess.run(
        [str(KEELSON), "status", "--root", str(suite.root)], capture_output=True, text=True
    )
    assert status.returncode == 3


def test_a_zombie_counts_as_gone_for_down() -> None:
    """`keelson down` waits for `keelson up`; one whose parent has not reaped it is gone."""
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not pid_alive(child.pid)
    assert pid_alive(os.getpid())
    child.wait()


def test_config_escapes_percent_and_moves_a_long_socket(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60) / ".keelson"
    program = Program(
        name="svc",
        command=[sys.executable, "-c", "print('100% done')"],
        directory=tmp_path,
        log=tmp_path / "svc.log",
        environment={"KEELSON_PORT": "1234"},
    )
    text = render_config(deep, [program], password="secret")
    assert "100%% done" in text
    assert 'environment=KEELSON_PORT="1234"' in text
    sock = socket_path(deep)
    assert len(str(sock)) <= 100
    assert sock == socket_path(deep)
    assert f"file={sock}" in text


@pytest.mark.parametrize(
    ("host", "trusted"), [("127.0.0.1", "127.0.0.1"), ("0.0.0.0", "127.0.0.1")]
)
def test_services_believe_forwarded_addresses_from_the_gateway_only(
    tmp_path: Path, host: str, trusted: str
) -> None:
    environment = Layout(tmp_path, tmp_path / ".keelson", host=host).service_environment()
    assert json.loads(environment["KEELSON_TRUSTED_PROXIES"]) == [trusted]
    assert environment["KEELSON_AUTH__PUBLIC_URL"] == f"http://{trusted}:8000"  # the gateway

"""The log service's live tail through the gateway as `python -m gateway` serves it (granian),
in front of the real log service (its app, PostgreSQL and ZeroMQ intake)."""

import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from gateway_testkit import GatewayProcess, ServerThread, private_bus, write_config
from gateway_upstream import TokenMint
from sqlalchemy.engine import make_url

import logs_service
from gateway.upstreams import UpstreamConfig
from keelson.config import BusSettings, Environment, KeelsonSettings, LogSettings
from keelson.db import migrate
from keelson.keys import KeyManager
from keelson.logging import LogShipper, SenderCredentials
from keelson_dev.embedded import free_port
from keelson_dev.testing import LiveServer
from logs_service.app import create_app as create_logs_app
from logs_service.settings import IngestSettings
from logs_service.settings import Settings as LogsSettings

# Small, so that the test runs in seconds: the gateway's read timeout for the log service,
# the tail's keep-alive comments well inside it, and the tail's whole life a few of it.
READ_TIMEOUT = 1.0
KEEPALIVE = 0.25
TAIL_LASTS = 4.0
SENDER = f"tail-gw-{uuid.uuid4().hex[:8]}"

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def logs_server(test_database_url: str) -> Iterator[tuple[LiveServer, LogsSettings]]:
    migrate(Path(logs_service.__file__).parent / "migrations", test_database_url)
    dsn = make_url(test_database_url).set(drivername="postgresql")
    settings = LogsSettings(
        env=Environment.TEST,
        database_url=dsn.render_as_string(hide_password=False),
        log=LogSettings(ship_endpoint=None),
        logs=IngestSettings(
            bind_endpoint=f"tcp://127.0.0.1:{free_port()}",
            senders=[SENDER],
            tail_keepalive_seconds=KEEPALIVE,
            tail_max_seconds=TAIL_LASTS,
        ),
        bus=BusSettings(**private_bus()),
    )
    with LiveServer(create_logs_app(settings)) as server:
        yield server, settings


@pytest.fixture(scope="module")
def gateway(
    logs_server: tuple[LiveServer, LogsSettings],
    auth_upstream: ServerThread,
    upstream: ServerThread,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    """The gateway with a 1 s read timeout for the log service; the stand-in upstream's
    slow route (same timeout) lent to it under `/api/v1/logs/slow`."""
    logs, _ = logs_server
    short = {"timeout_seconds": READ_TIMEOUT, "retries": 0}
    config = {
        "log": {"ship_endpoint": None},
        "bus": private_bus(),
        "plugins": {
            "security": {"default_policy": "user"},
            "rate_limiting": {"storage": "memory"},
            "routing": {
                "upstreams": {
                    "auth": {"url": auth_upstream.url},
                    "logs": {"url": logs.url, **short},
                    "notifications": {"url": upstream.url, "prefixes": ["/api/v1/logs/slow"]}
                    | short,
                    "payments": {"url": f"http://127.0.0.1:{free_port()}"},
                }
            },
        },
    }
    process = GatewayProcess(write_config(tmp_path_factory.mktemp("gateway"), config)).start()
    yield process
    process.stop()


def _shipper(endpoint: str, spill: Path) -> tuple[LogShipper, logging.Logger]:
    keys = KeyManager.from_settings(KeelsonSettings())
    shipper = LogShipper(
        endpoint,
        service=SENDER,
        spill_dir=spill,
        ack_timeout=0.5,
        credentials=SenderCredentials.derive(keys, SENDER),
    )
    logger = logging.getLogger(f"tail-through-gateway.{SENDER}")
    logger.handlers, logger.propagate = [shipper], False
    return shipper, logger


def test_a_tail_outlives_the_read_timeout_and_ends_cleanly(
    gateway: GatewayProcess,
    logs_server: tuple[LiveServer, LogsSettings],
    mint: TokenMint,
    tmp_path: Path,
) -> None:
    """A tail held open through the gateway for several of its read timeouts keeps
    delivering records (the keep-alive comments are the silence it would time out), then
    ends by itself after `tail_max_seconds` with the chunked body's last chunk: a client
    reads to the end, no broken connection."""
    _, settings = logs_server
    admin = {"Authorization": f"Bearer {mint.mint(roles=('admin',), scope='logs:read')}"}
    shipper, logger = _shipper(settings.logs.bind_endpoint, tmp_path)
    messages: list[str] = []
    comments: list[str] = []
    try:
        with (
            httpx.Client(base_url=gateway.url, timeout=httpx.Timeout(10.0)) as client,
            client.stream(
                "GET", "/api/v1/logs/tail", params={"service": SENDER}, headers=admin
            ) as response,
        ):
            assert response.status_code == 200, response.read()
            assert response.headers["content-type"].startswith("text/event-stream")
            opened = time.monotonic()
            logger.error("first, at once")
            shipped_late = False
            for line in response.iter_lines():  # to the stream's end: raises if it is cut
                if line.startswith("data: "):
                    messages.append(orjson.loads(line.removeprefix("data: "))["message"])
                elif line.startswith(":"):
                    comments.append(line)
                # One more record once the stream has outlived the read timeout twice over.
                if not shipped_late and time.monotonic() - opened > 2 * READ_TIMEOUT:
                    logger.error("second, after twice the read timeout")
                    shipped_late = True
            lasted = time.monotonic() - opened
    finally:
        shipper.close()
    assert messages == ["first, at once", "second, after twice the read timeout"]
    assert comments[0] == ": tail started"
    assert ": keep-alive" in comments
    assert comments[-1].startswith(": tail ended")
    assert lasted > 2 * READ_TIMEOUT


def test_a_slow_answer_on_an_ordinary_route_still_times_out(
    gateway: GatewayProcess, mint: TokenMint
) -> None:
    """The same read timeout ends an answer that stays silent: 504 problem+json."""
    user = {"Authorization": f"Bearer {mint.mint(roles=('user',))}"}
    answer = httpx.get(
        gateway.url + "/api/v1/logs/slow",
        params={"seconds": 4 * READ_TIMEOUT},
        headers=user,
        timeout=10,
    )
    assert answer.status_code == 504, answer.text
    assert answer.headers["content-type"] == "application/problem+json"


def test_by_default_a_quiet_tail_speaks_within_the_gateways_read_timeout() -> None:
    """The defaults keep a tail with nothing to say open through the gateway: its keep-alive
    comment comes before the gateway's read timeout would end the answer."""
    gateway_timeout = UpstreamConfig(url="http://logs", prefixes=["/api/v1/logs"]).timeout_seconds
    assert IngestSettings().tail_keepalive_seconds < gateway_timeout

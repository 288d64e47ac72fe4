"""Payments end to end: the sandbox flow through the gateway, and the outbox across a crash.

auth, payments, notifications and the gateway run as real processes (`python -m <pkg>`) on
free ports over a database of their own, and mail goes to the SMTP sink `keelson up` runs
(`python -m keelson_dev.mailsink`, aiosmtpd writing `.eml` files), read back as `keelson mail`
reads it.
"""

import asyncio
import csv
import email
import email.policy
import json
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from keelson.auth import Principal, identity_key, sign_identity
from keelson.bus import RedisBus
from keelson.events import Envelope
from keelson.keys import KeyManager
from keelson_dev.embedded import free_port
from keelson_dev.mailsink import MailboxEntry, read_mailbox
from keelson_dev.testing import (
    ServiceProcess,
    eventually,
    fresh_database,
    gateway_process,
    migrated,
)
from payments_service.settings import Settings as PaymentsSettings

ROOT = Path(__file__).resolve().parents[1]
ADMIN_EMAIL = "payments-admin@example.com"
PASSWORD = "plum tractors sing quietly"


@pytest.fixture(scope="module")
def flow_database(postgres_server_url: str) -> Iterator[str]:
    with fresh_database(postgres_server_url, prefix="keelson_payflow") as url:
        yield migrated(url, "auth_service", "payments_service", "notifications_service")


@pytest.fixture
def crash_database(postgres_server_url: str) -> Iterator[str]:
    """A database of its own: the module's running suite would relay its outbox rows."""
    with fresh_database(postgres_server_url, prefix="keelson_paycrash") as url:
        yield migrated(url, "payments_service")


def payments_process(
    workdir: Path, database: str, redis_url: str, **plugins: Any
) -> ServiceProcess:
    plugins.setdefault("auth", {"jwks_url": f"http://127.0.0.1:{free_port()}/jwks.json"})
    return ServiceProcess(
        "payments_service",
        workdir,
        {
            "KEELSON_DATABASE_URL": database,
            "KEELSON_REDIS_URL": redis_url,
            "KEELSON_LOG__SHIP_ENDPOINT": "",
            "KEELSON_PLUGINS": json.dumps(plugins),
        },
    )


@pytest.fixture(scope="module")
def mail_sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """`keelson up`'s SMTP sink as its own process: (port, the directory of its .eml files)."""
    port, directory = free_port(), tmp_path_factory.mktemp("payflow-mail")
    command = [sys.executable, "-m", "keelson_dev.mailsink", "--dir", str(directory)]
    sink = subprocess.Popen([*command, "--port", str(port)], stdout=subprocess.DEVNULL)

    def accepting() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    try:
        asyncio.run(eventually(accepting, timeout=30, interval=0.1))
        yield port, directory
    finally:
        sink.terminate()
        sink.wait(timeout=10)


async def mail_to(directory: Path, to: str, subject: str) -> MailboxEntry:
    def arrived() -> list[MailboxEntry]:
        return [
            m for m in read_mailbox(directory, limit=500) if m.to == to and m.subject == subject
        ]

    [mail] = await eventually(arrived, timeout=90)
    return mail


def text_of(mail: MailboxEntry) -> str:
    message = email.message_from_bytes(mail.path.read_bytes(), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    return str(body.get_content())


@pytest.fixture(scope="module")
async def suite(
    flow_database: str,
    redis_url: str,
    mail_sink: tuple[int, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[str]:
    workdir = tmp_path_factory.mktemp("payflow")
    auth = ServiceProcess(
        "auth_service",
        workdir,
        {
            "KEELSON_DATABASE_URL": flow_database,
            "KEELSON_REDIS_URL": redis_url,
            "KEELSON_LOG__SHIP_ENDPOINT": "",
            "KEELSON_ADMIN_EMAIL": ADMIN_EMAIL,
            "KEELSON_ADMIN_PASSWORD": PASSWORD,
            "KEELSON_AUTH__PASSWORD__TIME_COST": "1",
            "KEELSON_AUTH__PASSWORD__MEMORY_COST": "1024",
            "KEELSON_AUTH__PASSWORD__PARALLELISM": "1",
        },
    )
    payments = payments_process(
        workdir, flow_database, redis_url, auth={"jwks_url": f"{auth.url}/.well-known/jwks.json"}
    )
    notifications = ServiceProcess(
        "notifications_service",
        workdir,
        {
            "KEELSON_DATABASE_URL": flow_database,
            "KEELSON_REDIS_URL": redis_url,
            "KEELSON_LOG__SHIP_ENDPOINT": "",
            "KEELSON_NOTIFICATIONS__EMAIL__PORT": str(mail_sink[0]),
            # A group of its own: other suites' notifications share this Redis.
            "KEELSON_NOTIFICATIONS__CONSUMER_GROUP": f"payflow-{uuid.uuid4().hex[:8]}",
            "KEELSON_PLUGINS": json.dumps(
                {"auth": {"jwks_url": f"{auth.url}/.well-known/jwks.json"}}
            ),
        },
    )
    upstreams = {"auth": auth.url, "payments": payments.url, "notifications": notifications.url}
    gateway = gateway_process(workdir, upstreams, redis_url=redis_url)
    running = [auth, payments, notifications, gateway]
    try:
        # Ready, not just live: a service is ready once it holds auth's signing keys, so
        # the first token minted is accepted (before, "unknown signing key" raced it).
        for process in running:
            await process.wait_for("/health/ready")
        yield gateway.url
    finally:
        for process in running:
            process.stop()


async def bearer(client: httpx.AsyncClient, email: str) -> dict[str, str]:
    if email != ADMIN_EMAIL:
        registered = await client.post(
            "/api/v1/auth/register", json={"email": email, "password": PASSWORD}
        )
        assert registered.status_code == 202, registered.text
    login = await client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    return {"Authorization": f"Bearer {login.json()['access_token']}"}


async def test_the_sandbox_flow_through_the_gateway(
    suite: str, mail_sink: tuple[int, Path]
) -> None:
    mailbox = mail_sink[1]
    payer = f"payer-{uuid.uuid4().hex[:8]}@example.com"
    async with httpx.AsyncClient(base_url=suite, timeout=60) as client:
        me = await bearer(client, payer)
        # The welcome mail: notifications has the payer's address from auth's event.
        await mail_to(mailbox, payer, "Welcome to Keelson")
        stranger = await bearer(client, f"other-{uuid.uuid4().hex[:8]}@example.com")
        admin = await bearer(client, ADMIN_EMAIL)
        anonymous = await client.post(
            "/api/v1/payments/intents", json={"amount": 100, "currency": "usd"}
        )
        assert anonymous.status_code == 401
        created = await client.post(
            "/api/v1/payments/intents",
            json={"amount": 2500, "currency": "usd", "description": "Receipt test"},
            headers={**me, "Idempotency-Key": "order-1"},
        )
        assert created.status_code == 201, created.text
        intent = created.json()
        assert intent["sandbox"] is True and intent["livemode"] is False
        paid = await client.post(
            f"/api/v1/payments/sandbox/intents/{intent['id']}/succeed", headers=admin
        )
        assert paid.status_code == 200 and paid.json()["status"] == "succeeded", paid.text
        # payments.payment_succeeded: outbox, bus, notifications, SMTP.
        receipt = await mail_to(mailbox, payer, "Receipt: 25.00 USD")
        assert intent["id"] in text_of(receipt)
        refund = await client.post(
            f"/api/v1/payments/intents/{intent['id']}/refunds",
            json={"amount": 500},
            headers={**me, "Idempotency-Key": "refund-1"},
        )
        assert refund.status_code == 201, refund.text
        refund_mail = await mail_to(mailbox, payer, "Refund of 5.00 USD")
        assert refund.json()["id"] in text_of(refund_mail)
        mine = await client.get(f"/api/v1/payments/intents/{intent['id']}", headers=me)
        assert (mine.json()["status"], mine.json()["amount_refunded"]) == (
            "partially_refunded",
            500,
        )
        theirs = await client.get(f"/api/v1/payments/intents/{intent['id']}", headers=stranger)
        assert theirs.status_code == 404
        # The webhook path is public at the gateway: a bad signature is the service's 400.
        webhook = await client.post(
            "/api/v1/payments/webhooks/stripe",
            content=b'{"id": "evt_1"}',
            headers={"Content-Type": "application/json", "Stripe-Signature": "t=1,v1=00"},
        )
        assert webhook.status_code == 400, webhook.text
        assert webhook.headers["content-type"] == "application/problem+json"


def admin_identity() -> dict[str, str]:
    settings = PaymentsSettings()
    key = identity_key(KeyManager(settings.master_key.get_secret_value()))
    return sign_identity(Principal(user_id="ops", roles=frozenset({"admin", "user"})), key)


async def test_an_event_committed_before_a_crash_reaches_the_bus(
    crash_database: str, redis_url: str, tmp_path: Path
) -> None:
    flow_database = crash_database
    # The first process commits the payment but never relays (its relay is off, as if it
    # died right after the commit), and is then killed.
    first = payments_process(tmp_path, flow_database, redis_url, outbox_relay={"enabled": False})
    try:
        await first.wait_for("/health/live")
        async with httpx.AsyncClient(base_url=first.url, timeout=60) as client:
            headers = admin_identity()
            created = await client.post(
                "/api/v1/payments/intents",
                json={"amount": 4100, "currency": "eur"},
                headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
            )
            assert created.status_code == 201, created.text
            payment_id = created.json()["id"]
            paid = await client.post(
                f"/api/v1/payments/sandbox/intents/{payment_id}/succeed", headers=headers
            )
            assert paid.status_code == 200, paid.text
    finally:
        first.process.send_signal(signal.SIGKILL)
        first.process.wait()

    engine = create_async_engine(flow_database)
    async with engine.connect() as conn:
        unpublished = await conn.scalar(
            text(
                "SELECT count(*) FROM payments.outbox WHERE published_at IS NULL"
                " AND payload->'data'->>'payment_id' = :id"
            ),
            {"id": payment_id},
        )
    await engine.dispose()
    assert unpublished == 1

    redis = Redis.from_url(redis_url)
    bus = RedisBus(redis, producer="test-listener")
    received: list[Envelope] = []

    async def collect(envelope: Envelope) -> None:
        received.append(envelope)

    bus.subscribe("payments.payment_succeeded", collect, group=f"t-{uuid.uuid4().hex[:8]}")
    await bus.start()
    await bus.wait_ready()
    second = payments_process(tmp_path, flow_database, redis_url)
    try:
        await second.wait_for("/health/live")
        await eventually(
            lambda: [e for e in received if e.data.get("payment_id") == payment_id], timeout=60
        )
    finally:
        second.stop()
        await bus.stop()
        await redis.aclose()
    [envelope] = [e for e in received if e.data.get("payment_id") == payment_id]
    assert envelope.producer == "payments" and envelope.data["amount"] == 4100


def test_the_locust_payment_scenario_runs_clean(suite: str, tmp_path: Path) -> None:
    # Locust reads what the gateway offers from its merged document once at the start: wait
    # until that document holds the payments service's operations (fetched after it starts).
    def offers_payments() -> bool:
        document = httpx.get(f"{suite}/openapi.json", timeout=10).json()
        return "/api/v1/payments/intents" in document.get("paths", {})

    asyncio.run(eventually(offers_payments, timeout=60, interval=0.2))
    locust = Path(sys.executable).parent / "locust"
    result = subprocess.run(
        [
            str(locust), "-f", str(ROOT / "loadtests" / "locustfile.py"), "--headless",
            "-u", "2", "-r", "2", "-t", "15s", "--host", suite, "--csv", str(tmp_path / "run"),
            "--only-summary", "--exit-code-on-error", "1", "PaymentUser",
        ],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    with (tmp_path / "run_stats.csv").open() as stats:
        rows = {row["Name"]: row for row in csv.DictReader(stats)}
    assert rows["Aggregated"]["Failure Count"] == "0"
    assert int(rows["/api/v1/payments/intents (create)"]["Request Count"]) > 0

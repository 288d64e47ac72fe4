"""Real processes: gateway, auth and notifications, mailing a real SMTP server (aiosmtpd).

A registration made through the gateway is welcomed by mail; the verification and reset
links in the received mails complete those flows through the gateway; a user mails
themselves through the gateway with their own access token.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from notifications_testkit import Received, SmtpSink

from keelson.db import migrate
from keelson_dev.embedded import free_port
from keelson_dev.testing import ServiceProcess, eventually, fresh_database

ROOT = Path(__file__).resolve().parents[3]
PASSWORD = "plum tractors sing quietly"
PUBLIC = "https://app.keelson.test"
LINK = re.compile(r"https://app\.keelson\.test/\S+")


@pytest.fixture(scope="module")
def flows_database(postgres_server_url: str) -> Iterator[str]:
    with fresh_database(postgres_server_url, prefix="keelson_mail") as url:
        yield url


@pytest.fixture(scope="module")
async def gateway(
    flows_database: str,
    redis_url: str,
    smtp_sink: SmtpSink,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[str]:
    for service, package in (("auth", "auth_service"), ("notifications", "notifications_service")):
        await asyncio.to_thread(
            migrate, ROOT / "services" / service / package / "migrations", flows_database
        )
    workdir = tmp_path_factory.mktemp("mail-flows")
    quiet = {"KEELSON_LOG__SHIP_ENDPOINT": f"tcp://127.0.0.1:{free_port()}"}
    auth = ServiceProcess(
        "auth_service",
        workdir,
        {
            **quiet,
            "KEELSON_DATABASE_URL": flows_database,
            "KEELSON_REDIS_URL": redis_url,
            "KEELSON_AUTH__PASSWORD__TIME_COST": "1",
            "KEELSON_AUTH__PASSWORD__MEMORY_COST": "1024",
            "KEELSON_AUTH__PASSWORD__PARALLELISM": "1",
            "KEELSON_AUTH__EMAIL_TOKEN_COOLDOWN_SECONDS": "0",
        },
    )
    notifications = ServiceProcess(
        "notifications_service",
        workdir,
        {
            **quiet,
            "KEELSON_DATABASE_URL": flows_database,
            "KEELSON_REDIS_URL": redis_url,
            "KEELSON_NOTIFICATIONS__EMAIL__PORT": str(smtp_sink.port),
            "KEELSON_NOTIFICATIONS__PUBLIC_BASE_URL": PUBLIC,
            "KEELSON_NOTIFICATIONS__CONSUMER_GROUP": f"mail-flows-{uuid.uuid4().hex[:8]}",
            "KEELSON_PLUGINS": json.dumps(
                {"auth": {"jwks_url": f"{auth.url}/.well-known/jwks.json"}}
            ),
        },
    )
    dead = f"http://127.0.0.1:{free_port()}"
    upstreams = {
        "auth": auth.url,
        "notifications": notifications.url,
        "logs": dead,
        "payments": dead,
    }
    gateway = ServiceProcess(
        "gateway",
        workdir,
        {
            **quiet,
            "KEELSON_REDIS_URL": redis_url,
            "KEELSON_PLUGINS": json.dumps(
                {
                    "routing": {"upstreams": {n: {"url": u} for n, u in upstreams.items()}},
                    "rate_limiting": {"key_prefix": f"mail-{uuid.uuid4().hex[:6]}"},
                }
            ),
        },
    )
    processes = [auth, notifications, gateway]
    try:
        for process in processes:
            await process.wait_for("/health/ready")
        yield gateway.url
    finally:
        for process in processes:
            process.stop()


async def _mail(sink: SmtpSink, to: str, subject: str) -> Received:
    # Other tests' apps in this session consume the same bus and mail the same sink; the
    # processes started here are the ones whose links name PUBLIC.
    def arrived() -> list[Received]:
        return [m for m in sink.to(to) if m.message["Subject"] == subject and PUBLIC in m.text()]

    [mail] = await eventually(arrived, timeout=90)
    return mail


def _token(mail: Received, path: str) -> str:
    [link] = LINK.findall(mail.text())
    parts = urlsplit(link)
    assert parts.path == path
    return parse_qs(parts.query)["token"][0]


pytestmark = pytest.mark.timeout(300)


async def test_registration_is_welcomed_and_the_verification_link_works(
    gateway: str, smtp_sink: SmtpSink
) -> None:
    email = f"new-{uuid.uuid4().hex[:8]}@example.com"
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as client:
        registered = await client.post(
            "/api/v1/auth/register", json={"email": email, "password": PASSWORD, "name": "Ada"}
        )
        assert registered.status_code == 202, registered.text  # says nothing, by design

        welcome = await _mail(smtp_sink, email, "Welcome to Keelson, Ada")
        assert "Hello Ada" in welcome.text()
        verify = await _mail(smtp_sink, email, "Confirm your email address")
        token = _token(verify, "/verify-email")
        confirmed = await client.post("/api/v1/auth/verify-email/confirm", json={"token": token})
        assert confirmed.status_code == 204, confirmed.text
        tokens = (
            await client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        ).json()
        me = await client.get(
            "/api/v1/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
        )
        assert me.json()["email_verified"] is True


async def test_a_password_reset_is_completed_by_following_the_mailed_link(
    gateway: str, smtp_sink: SmtpSink
) -> None:
    email = f"forgetful-{uuid.uuid4().hex[:8]}@example.com"
    new_password = "seven green herons at dawn"
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as client:
        await client.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
        asked = await client.post("/api/v1/auth/password-reset/request", json={"email": email})
        assert asked.status_code == 202

        mail = await _mail(smtp_sink, email, "Reset your password")
        assert "List-Unsubscribe" not in mail.message
        token = _token(mail, "/reset-password")
        reset = await client.post(
            "/api/v1/auth/password-reset/confirm",
            json={"token": token, "new_password": new_password},
        )
        assert reset.status_code == 204, reset.text
        old = await client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        assert old.status_code == 401
        new = await client.post(
            "/api/v1/auth/login", json={"email": email, "password": new_password}
        )
        assert new.status_code == 200


async def test_a_user_mails_themselves_through_the_gateway_but_nobody_else(
    gateway: str, smtp_sink: SmtpSink
) -> None:
    email = f"self-{uuid.uuid4().hex[:8]}@example.com"
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as client:
        await client.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
        await _mail(smtp_sink, email, "Welcome to Keelson")  # auth's event reached us
        tokens = (
            await client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        ).json()
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        message = {"channel": "email", "to": email, "subject": "Note to self", "body": PUBLIC}
        sent = await client.post("/api/v1/notifications", json=message, headers=headers)
        assert sent.status_code == 202, sent.text
        await _mail(smtp_sink, email, "Note to self")

        other = {**message, "to": "someone-else@example.com"}
        refused = await client.post("/api/v1/notifications", json=other, headers=headers)
        assert refused.status_code == 403
        assert refused.headers["content-type"] == "application/problem+json"
        detail = await client.get(f"/api/v1/notifications/{sent.json()['id']}", headers=headers)
        assert detail.json()["status"] in ("sending", "sent")
        anonymous = await client.get(f"/api/v1/notifications/{sent.json()['id']}")
        assert anonymous.status_code == 401

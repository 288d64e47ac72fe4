"""Real processes: gateway, auth and notifications, mailing a real SMTP server (aiosmtpd).

A registration made through the gateway is welcomed by mail; the verification and reset
links in the received mails complete those flows through the gateway, once, and not
after they expire or a newer link replaced them; signing up with a taken address answers
alike and mails the owner; a user mails themselves, and texts the phone on their profile,
with their own access token; no action token appears in any process's output.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from notifications_testkit import Received, SmtpSink
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

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


@dataclass
class Flows:
    url: str
    database: str
    logs: list[Path]
    tokens: list[str] = field(default_factory=list)  # every action token mailed


@pytest.fixture(scope="module")
async def flows(
    flows_database: str,
    redis_url: str,
    smtp_sink: SmtpSink,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Flows]:
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
        yield Flows(gateway.url, flows_database, [p.log for p in processes])
    finally:
        for process in processes:
            process.stop()


@pytest.fixture(scope="module")
def gateway(flows: Flows) -> str:
    return flows.url


async def _mails(sink: SmtpSink, to: str, subject: str, count: int = 1) -> list[Received]:
    # Other tests' apps in this session consume the same bus and mail the same sink; the
    # processes started here are the ones whose links name PUBLIC.
    def arrived() -> list[Received]:
        found = [m for m in sink.to(to) if m.message["Subject"] == subject and PUBLIC in m.text()]
        return found if len(found) >= count else []

    found = await eventually(arrived, timeout=90)
    assert len(found) == count, [m.message["Subject"] for m in found]
    return found


async def _mail(sink: SmtpSink, to: str, subject: str) -> Received:
    [mail] = await _mails(sink, to, subject)
    return mail


def _token(mail: Received, path: str, flows: Flows | None = None) -> str:
    [link] = LINK.findall(mail.text())
    parts = urlsplit(link)
    assert parts.path == path
    token = parse_qs(parts.query)["token"][0]
    if flows is not None:
        flows.tokens.append(token)
    return token


pytestmark = pytest.mark.timeout(300)


async def test_registration_is_welcomed_and_the_verification_link_works(
    gateway: str, smtp_sink: SmtpSink, flows: Flows
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
        token = _token(verify, "/verify-email", flows)
        confirmed = await client.post("/api/v1/auth/verify-email/confirm", json={"token": token})
        assert confirmed.status_code == 204, confirmed.text
        again = await client.post("/api/v1/auth/verify-email/confirm", json={"token": token})
        assert again.status_code == 400, "the link works once"
        assert again.headers["content-type"] == "application/problem+json"
        tokens = (
            await client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        ).json()
        me = await client.get(
            "/api/v1/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
        )
        assert me.json()["email_verified"] is True


async def test_a_password_reset_is_completed_by_following_the_mailed_link(
    gateway: str, smtp_sink: SmtpSink, flows: Flows
) -> None:
    email = f"forgetful-{uuid.uuid4().hex[:8]}@example.com"
    new_password = "seven green herons at dawn"
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as client:
        await client.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
        asked = await client.post("/api/v1/auth/password-reset/request", json={"email": email})
        assert asked.status_code == 202

        mail = await _mail(smtp_sink, email, "Reset your password")
        assert "List-Unsubscribe" not in mail.message
        token = _token(mail, "/reset-password", flows)
        reset = await client.post(
            "/api/v1/auth/password-reset/confirm",
            json={"token": token, "new_password": new_password},
        )
        assert reset.status_code == 204, reset.text
        replayed = await client.post(
            "/api/v1/auth/password-reset/confirm",
            json={"token": token, "new_password": "an attacker's own new password"},
        )
        assert replayed.status_code == 400, "the link works once"
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


async def test_signing_up_with_a_taken_address_answers_alike_and_mails_its_owner(
    gateway: str, smtp_sink: SmtpSink
) -> None:
    email = f"taken-{uuid.uuid4().hex[:8]}@example.com"
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as client:
        first = await client.post(
            "/api/v1/auth/register", json={"email": email, "password": PASSWORD}
        )
        await _mail(smtp_sink, email, "Welcome to Keelson")
        again = await client.post(
            "/api/v1/auth/register",
            json={"email": email.upper(), "password": "someone else's password 42"},
        )
        assert (first.status_code, again.status_code) == (202, 202)
        assert first.content == again.content  # the same answer: nothing to enumerate

        told = await _mail(smtp_sink, email, "You already have a Keelson account")
        assert "List-Unsubscribe" not in told.message
        assert f"{PUBLIC}/reset-password" in told.text()
        still = await client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        assert still.status_code == 200, "the owner's password is unchanged"


async def test_a_newer_verification_link_replaces_the_older_and_links_expire(
    gateway: str, smtp_sink: SmtpSink, flows: Flows
) -> None:
    email = f"twice-{uuid.uuid4().hex[:8]}@example.com"
    subject = "Confirm your email address"
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as client:
        await client.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
        [first] = await _mails(smtp_sink, email, subject)
        asked = await client.post("/api/v1/auth/verify-email/request", json={"email": email})
        assert asked.status_code == 202
        older, newer = await _mails(smtp_sink, email, subject, count=2)
        assert older.message_id == first.message_id
        old_token = _token(older, "/verify-email", flows)
        new_token = _token(newer, "/verify-email", flows)
        assert old_token != new_token

        stale = await client.post("/api/v1/auth/verify-email/confirm", json={"token": old_token})
        assert stale.status_code == 400, "a newer link replaced it"
        # The newer link, once it has expired (its expiry moved into the past).
        engine = create_async_engine(flows.database)
        try:
            async with engine.begin() as conn:
                moved = await conn.execute(
                    text(
                        "UPDATE auth.action_tokens SET expires_at = now() - interval '1 second'"
                        " WHERE user_id = (SELECT id FROM auth.users WHERE email = :email)"
                        " AND used_at IS NULL"
                    ),
                    {"email": email},
                )
                assert moved.rowcount >= 1
        finally:
            await engine.dispose()
        expired = await client.post("/api/v1/auth/verify-email/confirm", json={"token": new_token})
        assert expired.status_code == 400, "an expired link"

        # A fresh link after that works.
        await client.post("/api/v1/auth/verify-email/request", json={"email": email})
        *_, latest = await _mails(smtp_sink, email, subject, count=3)
        confirmed = await client.post(
            "/api/v1/auth/verify-email/confirm",
            json={"token": _token(latest, "/verify-email", flows)},
        )
        assert confirmed.status_code == 204, confirmed.text


async def test_a_user_texts_the_phone_on_their_profile_and_no_other_number(
    gateway: str, smtp_sink: SmtpSink
) -> None:
    email = f"phone-{uuid.uuid4().hex[:8]}@example.com"
    mine, other = "+1555" + str(uuid.uuid4().int)[:7], "+1555" + str(uuid.uuid4().int)[:7]
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as client:
        await client.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
        tokens = (
            await client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        ).json()
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        text_message = {"channel": "sms", "body": "Your code is 1234"}
        before = await client.post(
            "/api/v1/notifications", json={**text_message, "to": mine}, headers=headers
        )
        assert before.status_code == 403  # no phone on the profile yet

        profile = await client.patch("/api/v1/auth/me", json={"phone": mine}, headers=headers)
        assert profile.status_code == 200 and profile.json()["phone"] == mine

        async def sent_to_mine() -> httpx.Response | None:
            answer = await client.post(
                "/api/v1/notifications", json={**text_message, "to": mine}, headers=headers
            )
            return answer if answer.status_code == 202 else None

        await eventually(sent_to_mine, timeout=60)  # once auth's change reached notifications
        refused = await client.post(
            "/api/v1/notifications", json={**text_message, "to": other}, headers=headers
        )
        assert refused.status_code == 403
        assert refused.headers["content-type"] == "application/problem+json"


async def test_zz_no_action_token_reached_any_process_output(flows: Flows) -> None:
    """After the flows above (its name sorts last): not one of the tokens that were mailed
    appears in what the gateway, auth or notifications wrote (every log record, the same
    records the log store receives)."""
    assert len(flows.tokens) >= 5
    for log in flows.logs:
        output = log.read_text(errors="replace")
        assert output, log  # the processes did log
        for token in flows.tokens:
            assert token not in output, log.name

"""SMS through the Twilio SDK and Slack through slack-sdk, against local peers on their formats."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from fastapi import FastAPI
from notifications_testkit import Recorder, caller, recording_app, settled

import notifications_service
from keelson.db import migrate
from keelson_dev.testing import LiveServer, fresh_database
from notifications_service.app import create_app
from notifications_service.plugin import CHANNELS
from notifications_service.settings import Settings, SlackSettings, SmsSettings

SID = "AC" + "0" * 32
TWILIO_CREATED = (
    201,
    {"content-type": "application/json"},
    json.dumps(
        {
            "sid": "SM" + "1" * 32,
            "account_sid": SID,
            "status": "queued",
            "to": "+15551230000",
            "from": "+15005550006",
            "body": "hi",
            "num_segments": "1",
            "date_created": "Sun, 06 Dec 2026 20:00:00 +0000",
            "uri": f"/2010-04-01/Accounts/{SID}/Messages/SM{'1' * 32}.json",
        }
    ).encode(),
)
SERVICE_SCOPES = frozenset({"notifications:send", "notifications:send_any"})
SERVICE_ID = str(uuid.uuid4())


def service() -> dict[str, str]:
    """A service account's identity header, signed now (they expire)."""
    return caller(SERVICE_ID, roles=("service",), scopes=SERVICE_SCOPES)


def twilio_error(status: int, code: int, message: str) -> tuple[int, dict[str, str], bytes]:
    body = {"code": code, "message": message, "more_info": "https://www.twilio.com/docs/errors"}
    return (
        status,
        {"content-type": "application/json"},
        json.dumps({**body, "status": status}).encode(),
    )


@pytest.fixture(scope="module")
def twilio() -> Iterator[tuple[Recorder, str]]:
    recorder = Recorder()
    with LiveServer(recording_app(recorder, TWILIO_CREATED)) as server:
        yield recorder, server.url


@pytest.fixture(scope="module")
def slack() -> Iterator[tuple[Recorder, str]]:
    recorder = Recorder()
    with LiveServer(
        recording_app(recorder, (200, {"content-type": "text/plain"}, b"ok"))
    ) as server:
        yield recorder, server.url


@pytest.fixture(scope="module")
def providers_database(postgres_server_url: str) -> Iterator[str]:
    with fresh_database(postgres_server_url, prefix="keelson_providers") as url:
        migrate(Path(notifications_service.__file__).parent / "migrations", url)
        yield url


@pytest.fixture(scope="module")
async def providers_app(
    providers_database: str,
    settings_for: Callable[..., Settings],
    twilio: tuple[Recorder, str],
    slack: tuple[Recorder, str],
) -> AsyncIterator[FastAPI]:
    """An app on a database of its own, so that no other worker claims its rows."""
    settings = settings_for(
        sms=SmsSettings(account_sid=SID, auth_token="twilio-secret", api_base_url=twilio[1]),
        slack=SlackSettings(allowed_url_prefixes=[slack[1] + "/services/"]),
        consumer_group=f"providers-{uuid.uuid4().hex[:8]}",
    ).model_copy(update={"database_url": providers_database})
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def providers(providers_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=providers_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://notifications.test") as c:
        yield c


async def test_an_sms_goes_through_the_twilio_sdk_with_its_idempotency_token(
    providers: httpx.AsyncClient, twilio: tuple[Recorder, str]
) -> None:
    recorder, _ = twilio
    recorder.requests.clear()
    recorder.answers.extend([twilio_error(500, 20500, "Internal Server Error")])
    sent = await providers.post(
        "/api/v1/notifications",
        json={"channel": "sms", "to": "+15551230000", "body": "Your code is 1234"},
        headers=service(),
    )
    assert sent.status_code == 202, sent.text
    detail = await settled(providers, sent.json()["id"], service())
    assert detail["status"] == "sent"
    assert [a["response_code"] for a in detail["attempt_log"]] == [500, 201]
    path, headers, body = recorder.requests[-1]
    assert path == f"/2010-04-01/Accounts/{SID}/Messages.json"
    assert headers["authorization"].startswith("Basic ")
    assert headers["i-twilio-idempotency-token"] == sent.json()["id"]
    form = parse_qs(body.decode())
    assert form["To"] == ["+15551230000"] and form["From"] == ["+15005550006"]
    assert form["Body"] == ["Your code is 1234"]
    assert "twilio-secret" not in json.dumps(detail)


async def test_an_invalid_number_is_a_permanent_twilio_error(
    providers: httpx.AsyncClient, twilio: tuple[Recorder, str]
) -> None:
    twilio[0].answers.append(twilio_error(400, 21211, "The 'To' number is not valid."))
    sent = await providers.post(
        "/api/v1/notifications",
        json={"channel": "sms", "to": "+15550000000", "body": "hi"},
        headers=service(),
    )
    detail = await settled(providers, sent.json()["id"], service())
    assert detail["status"] == "failed"
    assert "21211" in detail["last_error"]
    assert [a["outcome"] for a in detail["attempt_log"]] == ["permanent_error"]


async def test_slack_429_retry_after_is_honoured(
    providers: httpx.AsyncClient, slack: tuple[Recorder, str]
) -> None:
    recorder, url = slack
    recorder.requests.clear()
    recorder.answers.extend(
        [
            (429, {"retry-after": "1"}, b"rate_limited"),
            (500, {}, b"internal_error"),
        ]
    )
    hook = url + "/services/T000/B000/XXXX"
    sent = await providers.post(
        "/api/v1/notifications",
        json={"channel": "slack", "to": hook, "subject": "Deploy", "body": "v1.2 is out"},
        headers=service(),
    )
    assert sent.status_code == 202, sent.text
    detail = await settled(providers, sent.json()["id"], service())
    assert detail["status"] == "sent"
    attempts = detail["attempt_log"]
    assert [a["response_code"] for a in attempts] == [429, 500, 200]
    first, second = (datetime.fromisoformat(a["attempted_at"]) for a in attempts[:2])
    assert (second - first).total_seconds() >= 1.0  # not before Slack's Retry-After
    assert json.loads(recorder.requests[-1][2]) == {"text": "*Deploy*\nv1.2 is out"}


async def test_slack_urls_are_checked_and_need_send_any(
    providers: httpx.AsyncClient, slack: tuple[Recorder, str]
) -> None:
    _, url = slack
    message = {"channel": "slack", "to": url + "/services/T/B/X", "body": "hi"}
    assert (
        await providers.post("/api/v1/notifications", json=message, headers=caller())
    ).status_code == 403
    elsewhere = {**message, "to": "http://169.254.169.254/services/x"}
    assert (
        await providers.post("/api/v1/notifications", json=elsewhere, headers=service())
    ).status_code == 422


async def test_without_twilio_credentials_the_sandbox_records_sms(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    sent = await client.post(
        "/api/v1/notifications",
        json={"channel": "sms", "to": "+15557654321", "body": "sandboxed"},
        headers=service(),
    )
    detail = await settled(client, sent.json()["id"], service())
    assert detail["status"] == "sent"
    sandbox: Any = app.state.container.resolve(CHANNELS)["sms"]
    assert {"id": sent.json()["id"], "to": "+15557654321", "body": "sandboxed"} in sandbox.sent

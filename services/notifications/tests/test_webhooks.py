"""Webhook endpoints: secrets shown once, Standard Webhooks signatures, the SSRF guard."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from notifications_testkit import Recorder, caller, recording_app, settled
from standardwebhooks import Webhook, WebhookVerificationError

from keelson_dev.testing import LiveServer
from notifications_service.app import create_app
from notifications_service.channels import DeliveryError, OutgoingMessage
from notifications_service.channels.webhook import SignedWebhook
from notifications_service.settings import Settings, WebhookSettings
from notifications_service.ssrf import is_blocked

OK = (200, {"content-type": "application/json"}, b'{"ok":true}')


@pytest.fixture
def receiver() -> Iterator[tuple[Recorder, str]]:
    recorder = Recorder()
    with LiveServer(recording_app(recorder, OK)) as server:
        yield recorder, server.url


async def _endpoint(client: httpx.AsyncClient, url: str, headers: Any) -> dict[str, Any]:
    created = await client.post(
        "/api/v1/notifications/webhooks", json={"url": url, "description": "mine"}, headers=headers
    )
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    return body


async def test_a_test_delivery_verifies_with_the_standard_webhooks_library(
    client: httpx.AsyncClient, receiver: tuple[Recorder, str]
) -> None:
    recorder, url = receiver
    headers = caller()
    endpoint = await _endpoint(client, url + "/hooks?source=keelson", headers)
    assert endpoint["secret"].startswith("whsec_")
    listed = (await client.get("/api/v1/notifications/webhooks", headers=headers)).json()
    assert [e["id"] for e in listed] == [endpoint["id"]]
    assert "secret" not in listed[0]

    tested = await client.post(
        f"/api/v1/notifications/webhooks/{endpoint['id']}/test", headers=headers
    )
    assert tested.status_code == 202
    assert (await settled(client, tested.json()["id"], headers))["status"] == "sent"
    [(path, got, body)] = recorder.requests
    assert path == "/hooks"
    assert got["webhook-id"] == tested.json()["id"]
    payload = Webhook(endpoint["secret"]).verify(body, got)
    assert payload["type"] == "webhook_test"
    assert payload["data"]["subject"] == "Test delivery"
    with pytest.raises(WebhookVerificationError):
        Webhook(endpoint["secret"]).verify(body.replace(b"Test", b"Fake"), got)


async def test_sending_to_an_endpoint_retries_5xx_and_is_404_for_others(
    client: httpx.AsyncClient, receiver: tuple[Recorder, str]
) -> None:
    recorder, url = receiver
    headers = caller()
    endpoint = await _endpoint(client, url, headers)
    recorder.answers.extend([(500, {}, b"oops"), (429, {"retry-after": "0"}, b"slow down")])
    message = {
        "channel": "webhook",
        "to": endpoint["id"],
        "template": "welcome",
        "data": {"name": "Ada", "email": "ada@example.com"},
    }
    sent = await client.post("/api/v1/notifications", json=message, headers=headers)
    assert sent.status_code == 202, sent.text
    detail = await settled(client, sent.json()["id"], headers)
    assert detail["status"] == "sent"
    assert [a["response_code"] for a in detail["attempt_log"]] == [500, 429, 200]
    ids = {h["webhook-id"] for _, h, _ in recorder.requests}
    assert ids == {sent.json()["id"]}  # one id for every attempt: receivers deduplicate
    payload = json.loads(recorder.requests[-1][2])
    assert payload["data"]["data"] == {"name": "Ada", "email": "ada@example.com"}

    stranger = await client.post("/api/v1/notifications", json=message, headers=caller())
    assert stranger.status_code == 404
    gone = await client.delete(f"/api/v1/notifications/webhooks/{endpoint['id']}", headers=caller())
    assert gone.status_code == 404
    deleted = await client.delete(
        f"/api/v1/notifications/webhooks/{endpoint['id']}", headers=headers
    )
    assert deleted.status_code == 204
    assert (await client.get("/api/v1/notifications/webhooks", headers=headers)).json() == []


async def test_a_4xx_or_a_redirect_is_a_permanent_failure(
    client: httpx.AsyncClient, receiver: tuple[Recorder, str]
) -> None:
    recorder, url = receiver
    headers = caller()
    endpoint = await _endpoint(client, url, headers)
    recorder.answers.extend(
        [(410, {}, b"gone"), (302, {"location": "http://169.254.169.254/latest/meta-data"}, b"")]
    )
    for _ in range(2):
        sent = await client.post(
            "/api/v1/notifications",
            json={"channel": "webhook", "to": endpoint["id"], "body": "hi"},
            headers=headers,
        )
        detail = await settled(client, sent.json()["id"], headers)
        assert detail["status"] == "failed"
        assert len(detail["attempt_log"]) == 1
    assert len(recorder.requests) == 2  # the redirect was not followed


@pytest.fixture(scope="module")
def guarded_app(settings_for: Callable[..., Settings]) -> Any:
    """An app with the default webhook settings: no private network allowed."""
    return create_app(settings_for(webhook=WebhookSettings(), delivery={"worker": False}))


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[fd00:ec2::254]/",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "ftp://example.com/hook",
        "http://user:secret@example.com/hook",
        "http://name.invalid/hook",
    ],
)
async def test_the_ssrf_guard_refuses_inner_targets(
    guarded_app: Any, serve: Callable[..., Any], url: str
) -> None:
    async with serve(guarded_app) as client:
        refused = await client.post(
            "/api/v1/notifications/webhooks", json={"url": url}, headers=caller()
        )
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert "secret" not in refused.text


async def test_delivery_resolves_again_and_refuses_what_became_inner(
    receiver: tuple[Recorder, str],
) -> None:
    recorder, url = receiver
    channel = SignedWebhook(WebhookSettings())
    message = OutgoingMessage(
        id="msg_1", recipient=url, subject="s", text="t", secret="whsec_" + "A" * 44
    )
    with pytest.raises(DeliveryError) as refused:
        await channel.send(message)
    await channel.close()
    assert refused.value.permanent
    assert recorder.requests == []


@pytest.mark.parametrize(
    ("address", "blocked"),
    [
        ("8.8.8.8", False),
        ("2606:4700:4700::1111", False),
        ("127.0.0.1", True),
        ("::ffff:10.0.0.1", True),
        ("::ffff:8.8.8.8", False),
        ("100.100.100.200", True),
        ("fe80::1", True),
        ("ff02::1", True),
        ("100.64.0.1", True),
    ],
)
def test_blocked_addresses(address: str, blocked: bool) -> None:
    assert is_blocked(ipaddress.ip_address(address), []) is blocked


def test_the_allow_list_opens_a_network() -> None:
    allow = [ipaddress.ip_network("10.0.0.0/8")]
    assert not is_blocked(ipaddress.ip_address("10.1.2.3"), allow)
    assert not is_blocked(ipaddress.ip_address("::ffff:10.1.2.3"), allow)
    assert is_blocked(ipaddress.ip_address("192.168.1.1"), allow)

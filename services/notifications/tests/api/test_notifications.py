"""Sending email through the API to a real SMTP server: content, access, idempotency, paging."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

import httpx
from notifications_testkit import SmtpSink, admin, caller, new_email
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from keelson_dev.testing import eventually


async def _settled(client: httpx.AsyncClient, notification_id: str, headers: dict[str, str]) -> Any:
    async def done() -> Any:
        body = (
            await client.get(f"/api/v1/notifications/{notification_id}", headers=headers)
        ).json()
        return body if body["status"] not in ("pending", "sending") else None

    return await eventually(done, timeout=20)


async def test_a_user_emails_themselves_and_the_sink_gets_multipart_mail(
    client: httpx.AsyncClient, smtp_sink: SmtpSink, known_user: Callable[..., Any]
) -> None:
    headers, email = await known_user()
    response = await client.post(
        "/api/v1/notifications",
        json={
            "channel": "email",
            "to": email,
            "subject": "Hello <you>",
            "body": "Line one\n<b>not bold</b>",
        },
        headers=headers,
    )
    assert response.status_code == 202, response.text
    notification = response.json()
    assert notification["status"] == "pending"

    detail = await _settled(client, notification["id"], headers)
    assert detail["status"] == "sent"
    assert [a["outcome"] for a in detail["attempt_log"]] == ["sent"]
    assert detail["attempt_log"][0]["response_code"] == 250
    [mail] = smtp_sink.to(email)
    assert mail.message["Subject"] == "Hello <you>"
    assert mail.message_id == f"<{notification['id']}@keelson.localhost>"
    assert mail.message["Date"]
    assert "List-Unsubscribe" in mail.message  # not transactional
    assert "<b>not bold</b>" in mail.text()
    html = mail.html()
    assert html is not None and "&lt;b&gt;not bold&lt;/b&gt;" in html  # autoescaped


async def test_sending_to_someone_else_needs_the_send_any_scope(
    client: httpx.AsyncClient, smtp_sink: SmtpSink, known_user: Callable[..., Any]
) -> None:
    _, victim = await known_user()
    message = {"channel": "email", "to": victim, "subject": "Buy now", "body": "spam"}
    refused = await client.post("/api/v1/notifications", json=message, headers=caller())
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"
    stranger = await client.post(
        "/api/v1/notifications", json={**message, "to": new_email()}, headers=caller()
    )
    assert stranger.status_code == 403

    service = caller(
        roles=("service",), scopes=frozenset({"notifications:send", "notifications:send_any"})
    )
    allowed = await client.post("/api/v1/notifications", json=message, headers=service)
    assert allowed.status_code == 202
    assert (await _settled(client, allowed.json()["id"], service))["status"] == "sent"
    assert len(smtp_sink.to(victim)) == 1


async def test_another_users_notification_is_404_and_admins_see_all(
    client: httpx.AsyncClient, known_user: Callable[..., Any]
) -> None:
    owner, email = await known_user()
    created = await client.post(
        "/api/v1/notifications",
        json={"channel": "email", "to": email, "subject": "s", "body": "b"},
        headers=owner,
    )
    path = f"/api/v1/notifications/{created.json()['id']}"
    other = await client.get(path, headers=caller())
    assert other.status_code == 404
    assert other.json()["title"] == "Not Found"
    assert (await client.get(path, headers=admin())).status_code == 200
    listed = await client.get("/api/v1/notifications", headers=caller())
    assert listed.json()["items"] == []


async def test_twenty_concurrent_identical_requests_send_one_mail(
    client: httpx.AsyncClient, smtp_sink: SmtpSink, known_user: Callable[..., Any]
) -> None:
    headers, email = await known_user()
    body = {
        "channel": "email",
        "to": email,
        "template": "welcome",
        "data": {"name": "Ada", "email": email},
        "idempotency_key": "signup-42",
    }
    responses = await asyncio.gather(
        *(client.post("/api/v1/notifications", json=body, headers=headers) for _ in range(20))
    )
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 19
    await _settled(client, responses[0].json()["id"], headers)
    assert len(smtp_sink.to(email)) == 1
    again = await client.post("/api/v1/notifications", json=body, headers=headers)
    assert again.json()["id"] == responses[0].json()["id"]
    assert len(smtp_sink.to(email)) == 1

    reused = await client.post(
        "/api/v1/notifications", json={**body, "template": "verify_email"}, headers=headers
    )
    assert reused.status_code == 409


async def test_transient_errors_are_retried_until_sent(
    client: httpx.AsyncClient, smtp_sink: SmtpSink, known_user: Callable[..., Any]
) -> None:
    headers, email = await known_user()
    smtp_sink.replies[email] = deque(["451 4.3.0 try again later", "421 4.7.0 busy"])
    created = await client.post(
        "/api/v1/notifications",
        json={"channel": "email", "to": email, "subject": "s", "body": "b"},
        headers=headers,
    )
    detail = await _settled(client, created.json()["id"], headers)
    assert detail["status"] == "sent"
    outcomes = [(a["outcome"], a["response_code"]) for a in detail["attempt_log"]]
    assert outcomes == [("transient_error", 451), ("transient_error", 421), ("sent", 250)]
    assert len(smtp_sink.to(email)) == 1


async def test_retries_run_out_into_dead_letter_and_an_admin_replays_it(
    client: httpx.AsyncClient,
    smtp_sink: SmtpSink,
    known_user: Callable[..., Any],
    engine: AsyncEngine,
) -> None:
    headers, email = await known_user()
    smtp_sink.always[email] = "451 4.3.0 mailbox busy"
    created = await client.post(
        "/api/v1/notifications",
        json={"channel": "email", "to": email, "subject": "s", "body": "b"},
        headers=headers,
    )
    notification_id = created.json()["id"]
    detail = await _settled(client, notification_id, headers)
    assert detail["status"] == "dead_letter"
    assert detail["attempts"] == 3
    assert "451" in detail["last_error"]
    async with engine.connect() as conn:
        events = await conn.scalars(
            text("SELECT payload FROM outbox WHERE topic = 'notifications.delivery_failed'")
        )
        failed = [e["data"] for e in events if e["data"]["notification_id"] == notification_id]
    assert [(f["channel"], f["attempts"]) for f in failed] == [("email", 3)]
    assert email not in failed[0]["recipient"]  # masked: events travel further than rows
    scraped = (await client.get("/metrics")).text
    assert 'notifications_dead_lettered_total{channel="email"}' in scraped
    dead = await client.get("/api/v1/notifications/dead-letters", headers=admin())
    assert notification_id in [n["id"] for n in dead.json()["items"]]
    assert (
        await client.get("/api/v1/notifications/dead-letters", headers=headers)
    ).status_code == 403
    assert (
        await client.post(f"/api/v1/notifications/{notification_id}/retry", headers=headers)
    ).status_code == 403

    del smtp_sink.always[email]
    replayed = await client.post(f"/api/v1/notifications/{notification_id}/retry", headers=admin())
    assert replayed.status_code == 202
    detail = await _settled(client, notification_id, headers)
    assert detail["status"] == "sent"
    assert len(detail["attempt_log"]) == 4
    assert len(smtp_sink.to(email)) == 1
    again = await client.post(f"/api/v1/notifications/{notification_id}/retry", headers=admin())
    assert again.status_code == 409


async def test_a_permanent_refusal_is_not_retried(
    client: httpx.AsyncClient, smtp_sink: SmtpSink, known_user: Callable[..., Any]
) -> None:
    headers, email = await known_user()
    smtp_sink.replies[email] = deque(["550 5.1.1 no such mailbox"])
    created = await client.post(
        "/api/v1/notifications",
        json={"channel": "email", "to": email, "subject": "s", "body": "b"},
        headers=headers,
    )
    detail = await _settled(client, created.json()["id"], headers)
    assert detail["status"] == "failed"
    assert [a["outcome"] for a in detail["attempt_log"]] == ["permanent_error"]
    assert detail["attempt_log"][0]["response_code"] == 550


async def test_a_template_error_is_recorded_on_the_notification(
    client: httpx.AsyncClient, known_user: Callable[..., Any]
) -> None:
    headers, email = await known_user()
    created = await client.post(
        "/api/v1/notifications",
        json={"channel": "email", "to": email, "template": "payment_receipt", "data": {}},
        headers=headers,
    )
    detail = await _settled(client, created.json()["id"], headers)
    assert detail["status"] == "failed"
    assert "UndefinedError" in detail["last_error"]
    assert detail["attempt_log"][0]["outcome"] == "permanent_error"


async def test_data_cannot_run_template_code(
    client: httpx.AsyncClient, smtp_sink: SmtpSink, known_user: Callable[..., Any]
) -> None:
    headers, email = await known_user()
    created = await client.post(
        "/api/v1/notifications",
        json={
            "channel": "email",
            "to": email,
            "template": "welcome",
            "data": {"name": "{{ 7 * 7 }}{% print(1) %}", "email": email},
        },
        headers=headers,
    )
    assert (await _settled(client, created.json()["id"], headers))["status"] == "sent"
    [mail] = smtp_sink.to(email)
    assert "Hello {{ 7 * 7 }}{% print(1) %}," in mail.text()
    assert "Hello 49" not in mail.text()


async def test_bad_requests_are_problems(
    client: httpx.AsyncClient, known_user: Callable[..., Any]
) -> None:
    headers, email = await known_user()
    base = {"channel": "email", "to": email, "subject": "s", "body": "b"}
    cases: list[dict[str, Any]] = [
        {**base, "to": "not an address"},
        {**base, "subject": "two\nlines"},
        {**base, "body": "nul\x00byte"},
        {**base, "template": "../../etc/passwd", "subject": None, "body": None},
        {"channel": "email", "to": email, "template": "no_such_template"},
        {**base, "channel": "pigeon"},
        {**base, "data": {"_sealed_token": "x"}},
        {**base, "data": {"a": "x" * 20_000}},
        {**base, "data": {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}},
        {"channel": "email", "to": email, "body": "no subject"},
    ]
    for case in cases:
        response = await client.post("/api/v1/notifications", json=case, headers=headers)
        assert response.status_code == 422, (case, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert "Traceback" not in response.text
    anonymous = await client.post("/api/v1/notifications", json=base)
    assert anonymous.status_code == 401


async def test_the_list_is_keyset_paginated_and_filtered(
    client: httpx.AsyncClient, known_user: Callable[..., Any]
) -> None:
    headers, email = await known_user()
    ids = []
    for n in range(5):
        created = await client.post(
            "/api/v1/notifications",
            json={"channel": "email", "to": email, "subject": f"n{n}", "body": "b"},
            headers=headers,
        )
        ids.append(created.json()["id"])
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, "channel": "email"}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/api/v1/notifications", params=params, headers=headers)).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    sms = await client.get("/api/v1/notifications", params={"channel": "sms"}, headers=headers)
    assert sms.json()["items"] == []
    bad = await client.get("/api/v1/notifications", params={"cursor": "!!"}, headers=headers)
    assert bad.status_code == 400

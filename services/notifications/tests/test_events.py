"""Bus events become mail: welcome, links with sealed tokens, receipts; once per event."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from notifications_testkit import Received, SmtpSink, caller, new_email, user_of
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from keelson.bus import RedisBus, stream_key
from keelson.events import (
    ContactChanged,
    Envelope,
    Event,
    PasswordResetRequested,
    PaymentSucceeded,
    SignUpForExistingAccount,
    UserRegistered,
)
from keelson.keys import KeyManager, seal_action_token
from keelson_dev.testing import eventually
from notifications_service.settings import DEFAULT_EVENT_ROUTES, Settings
from notifications_service.templates import TemplateRenderer

LINK = re.compile(r"https?://\S+")


@pytest.fixture
async def bus(redis_url: str) -> AsyncIterator[RedisBus]:
    redis = Redis.from_url(redis_url)
    yield RedisBus(redis, producer="auth")
    await redis.aclose()


async def _rows(engine: AsyncEngine, event_id: str) -> list[Any]:
    async with engine.connect() as conn:
        result = await conn.execute(
            text("SELECT status, last_error FROM notifications WHERE source_event_id = :id"),
            {"id": event_id},
        )
        return list(result)


def _sealed(token: str, *, event_type: str, user_id: str) -> str:
    keys = KeyManager(Settings().master_key.get_secret_value())
    return seal_action_token(keys, token, event_type=event_type, user_id=user_id)


async def test_a_registration_gets_a_welcome_mail_and_the_address_becomes_the_users_own(
    app: Any, client: httpx.AsyncClient, bus: RedisBus, smtp_sink: SmtpSink
) -> None:
    headers = caller()
    user_id, email = user_of(headers), new_email()
    await bus.publish(UserRegistered(user_id=user_id, email=email, name="Ada"))

    [mail] = await eventually(lambda: smtp_sink.to(email), timeout=20)
    assert mail.message["Subject"] == "Welcome to Keelson, Ada"
    assert "Hello Ada" in mail.text()
    assert "List-Unsubscribe" in mail.message

    mine = await client.post(
        "/api/v1/notifications",
        json={"channel": "email", "to": email.upper(), "subject": "s", "body": "b"},
        headers=headers,
    )
    assert mine.status_code == 202


async def test_a_reset_mail_carries_the_unsealed_token_in_its_link_once(
    app: Any, bus: RedisBus, smtp_sink: SmtpSink, engine: AsyncEngine
) -> None:
    user_id, email, token = str(uuid.uuid4()), new_email(), "tok_" + uuid.uuid4().hex
    event = PasswordResetRequested(
        user_id=user_id,
        email=email,
        token=_sealed(token, event_type=PasswordResetRequested.type, user_id=user_id),
        expires_at=datetime.now(UTC) + timedelta(hours=1),
    )
    envelope = event.envelope(producer="auth")
    await bus.publish(envelope)
    await bus.publish(envelope)  # redelivered, or published twice

    [mail] = await eventually(lambda: smtp_sink.to(email), timeout=20)
    assert mail.message["Subject"] == "Reset your password"
    assert "List-Unsubscribe" not in mail.message  # transactional
    [link] = LINK.findall(mail.text())
    parts = urlsplit(link)
    assert (parts.scheme, parts.netloc, parts.path) == ("http", "127.0.0.1:8000", "/reset-password")
    assert parse_qs(parts.query) == {"token": [token]}
    html = mail.html()
    assert html is not None and "/reset-password?token=" + token in html

    async def sent() -> bool:
        return [row.status for row in await _rows(engine, envelope.id)] == ["sent"]

    await eventually(sent)
    assert len(smtp_sink.to(email)) == 1


async def test_a_token_that_was_not_sealed_for_us_is_not_mailed(
    app: Any, bus: RedisBus, smtp_sink: SmtpSink, engine: AsyncEngine
) -> None:
    user_id, email = str(uuid.uuid4()), new_email()
    moved = _sealed("t", event_type="auth.email_verification_requested", user_id=user_id)
    envelope = await bus.publish(
        PasswordResetRequested(
            user_id=user_id, email=email, token=moved, expires_at=datetime.now(UTC)
        )
    )

    async def failed() -> list[Any]:
        return [r for r in await _rows(engine, envelope.id) if r.status == "failed"]

    [row] = await eventually(failed, timeout=20)
    assert "sealed token" in row.last_error
    assert smtp_sink.to(email) == []


# Auth's events that are not messages to anyone (a login, an audit record, an address).
NOT_MESSAGES = {"auth.user_logged_in", "auth.audit", "auth.contact_changed"}


def test_every_auth_event_is_routed_to_an_existing_template_or_is_no_message() -> None:
    from auth_service import accounts, audit, login  # the modules that emit auth's events

    emitted = {
        value.type
        for module in (accounts, audit, login)
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, Event)
        and getattr(value, "type", "").startswith("auth.")
    }
    assert {"auth.signup_for_existing_account", "auth.contact_changed"} <= emitted
    renderer = TemplateRenderer()
    for event_type in emitted - NOT_MESSAGES:
        route = DEFAULT_EVENT_ROUTES.get(event_type)
        assert route is not None, f"{event_type} has no route"
        assert renderer.exists(route.template), f"{event_type}: no template {route.template}"


async def test_a_signup_with_a_taken_address_tells_its_owner_they_have_an_account(
    app: Any, bus: RedisBus, smtp_sink: SmtpSink, client: httpx.AsyncClient
) -> None:
    headers = caller()
    user_id, email = user_of(headers), new_email()
    await client.put(
        "/api/v1/notifications/preferences",
        json={"muted_channels": ["email"], "muted_categories": ["account"]},
        headers=headers,
    )
    await bus.publish(SignUpForExistingAccount(user_id=user_id, email=email))

    [mail] = await eventually(lambda: smtp_sink.to(email), timeout=20)
    assert mail.message["Subject"] == "You already have a Keelson account"
    assert "already has an account" in mail.text()
    assert "http://127.0.0.1:8000/reset-password" in mail.text()
    assert "List-Unsubscribe" not in mail.message  # transactional: sent even when muted


async def test_a_user_texts_the_phone_auth_has_on_record_for_them_and_no_other(
    app: Any, bus: RedisBus, client: httpx.AsyncClient
) -> None:
    headers = caller()
    user_id, email = user_of(headers), new_email()
    mine, other = "+1555" + str(uuid.uuid4().int)[:7], "+1555" + str(uuid.uuid4().int)[:7]
    text = {"channel": "sms", "body": "Your code is 1234"}

    async def send(to: str) -> int:
        sent = await client.post("/api/v1/notifications", json={**text, "to": to}, headers=headers)
        return sent.status_code

    assert await send(mine) == 403  # no phone on record yet
    changed = ContactChanged(user_id=user_id, email=email, phone=mine).envelope(producer="auth")
    await bus.publish(changed)

    async def allowed() -> bool:
        return await send(mine) == 202

    await eventually(allowed, timeout=20)
    assert await send(other) == 403
    # A change that happened earlier, delivered late, does not undo the newer one.
    stale = ContactChanged(user_id=user_id, email=email, phone=other).envelope(producer="auth")
    await bus.publish(stale.model_copy(update={"occurred_at": changed.occurred_at - timedelta(1)}))

    async def handled() -> bool:  # the group has read and acknowledged every change
        groups = await bus.redis.xinfo_groups(stream_key(ContactChanged.type))
        group = next(g for g in groups if g["name"] == b"notifications")
        return bool(group["pending"] == 0 and group["lag"] == 0)

    await eventually(handled, timeout=20)
    assert await send(mine) == 202
    assert await send(other) == 403
    removed = ContactChanged(user_id=user_id, email=email, phone=None)
    await bus.publish(removed)

    async def refused() -> bool:
        return await send(mine) == 403

    await eventually(refused, timeout=20)
    assert await send(other) == 403


async def test_a_payment_receipt_goes_to_the_payer(
    app: Any, bus: RedisBus, smtp_sink: SmtpSink
) -> None:
    email = new_email()
    await bus.publish(
        PaymentSucceeded(payment_id="pay_1", amount=1250, currency="eur", email=email)
    )
    [mail] = await eventually(lambda: smtp_sink.to(email), timeout=20)
    assert mail.message["Subject"] == "Receipt: 12.50 EUR"


async def test_an_event_naming_only_the_user_goes_to_the_address_auth_vouched_for(
    app: Any, bus: RedisBus, smtp_sink: SmtpSink
) -> None:
    email, user_id = new_email(), f"payer-{uuid.uuid4().hex[:8]}"
    await bus.publish(UserRegistered(user_id=user_id, email=email))
    await eventually(lambda: smtp_sink.to(email), timeout=20)  # the welcome: address known
    await bus.publish(
        PaymentSucceeded(payment_id="pay_2", amount=4200, currency="usd", user_id=user_id)
    )

    def receipts() -> list[Received]:
        return [m for m in smtp_sink.to(email) if m.message["Subject"] == "Receipt: 42.00 USD"]

    [receipt] = await eventually(receipts, timeout=20)
    assert "pay_2" in receipt.text()


async def test_preferences_mute_welcome_mail_but_never_the_verification_link(
    app: Any,
    client: httpx.AsyncClient,
    bus: RedisBus,
    smtp_sink: SmtpSink,
    engine: AsyncEngine,
    known_user: Callable[..., Any],
) -> None:
    headers, email = await known_user()
    user_id = user_of(headers)
    saved = await client.put(
        "/api/v1/notifications/preferences",
        json={"muted_categories": ["account"], "muted_channels": ["sms"], "locale": "fr"},
        headers=headers,
    )
    assert saved.status_code == 200, saved.text
    read = await client.get("/api/v1/notifications/preferences", headers=headers)
    assert read.json() == {
        "muted_channels": ["sms"],
        "muted_categories": ["account"],
        "locale": "fr",
    }

    welcome = await bus.publish(UserRegistered(user_id=user_id, email=email))
    verify = Envelope(
        type="auth.email_verification_requested",
        producer="auth",
        data={
            "user_id": user_id,
            "email": email,
            "token": _sealed("v", event_type="auth.email_verification_requested", user_id=user_id),
            "expires_at": datetime.now(UTC).isoformat(),
        },
    )
    await bus.publish(verify)
    [mail] = await eventually(lambda: smtp_sink.to(email), timeout=20)
    assert mail.message["Subject"] == "Confirm your email address"

    async def suppressed() -> bool:
        return [r.status for r in await _rows(engine, welcome.id)] == ["suppressed"]

    await eventually(suppressed)
    assert len(smtp_sink.to(email)) == 1

    muted = await client.post(
        "/api/v1/notifications",
        json={"channel": "email", "to": email, "subject": "s", "body": "b", "category": "account"},
        headers=headers,
    )
    assert muted.json()["status"] == "suppressed"
    bad = await client.put(
        "/api/v1/notifications/preferences", json={"muted_channels": ["fax"]}, headers=headers
    )
    assert bad.status_code == 422


async def test_a_users_locale_picks_the_template_with_a_fallback(
    app: Any,
    client: httpx.AsyncClient,
    smtp_sink: SmtpSink,
    known_user: Callable[..., Any],
) -> None:
    headers, email = await known_user()
    for locale in ("fr", "de"):
        await client.post(
            "/api/v1/notifications",
            json={
                "channel": "email",
                "to": email,
                "template": "welcome",
                "data": {"name": locale, "email": email},
                "locale": locale,
            },
            headers=headers,
        )
    mails = await eventually(lambda: len(smtp_sink.to(email)) == 2 and smtp_sink.to(email))
    subjects = sorted(m.message["Subject"] for m in mails)
    assert subjects == ["Bienvenue sur Keelson, fr", "Welcome to Keelson, de"]

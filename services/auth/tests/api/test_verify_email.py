"""POST /api/v1/auth/verify-email/{request,confirm}."""

from collections.abc import Awaitable, Callable
from typing import Any

import httpx

SignedIn = Callable[..., Awaitable[tuple[dict[str, Any], dict[str, Any]]]]
Outbox = Callable[..., Awaitable[list[dict[str, Any]]]]
Bearer = Callable[[dict[str, Any]], dict[str, str]]


async def test_the_token_sent_at_registration_verifies_the_email(
    client: httpx.AsyncClient, signed_in: SignedIn, outbox: Outbox, auth_header: Bearer
) -> None:
    user, tokens = await signed_in()
    [event] = await outbox("auth.email_verification_requested", user_id=user["id"])
    confirm = await client.post(
        "/api/v1/auth/verify-email/confirm", json={"token": event["data"]["token"]}
    )
    assert confirm.status_code == 204
    me = await client.get("/api/v1/auth/me", headers=auth_header(tokens))
    assert me.json()["email_verified"] is True
    again = await client.post(
        "/api/v1/auth/verify-email/confirm", json={"token": event["data"]["token"]}
    )
    assert again.status_code == 400


async def test_request_sends_a_new_token_and_voids_the_old_one(
    client: httpx.AsyncClient, signed_in: SignedIn, outbox: Outbox
) -> None:
    user, _ = await signed_in()
    response = await client.post("/api/v1/auth/verify-email/request", json={"email": user["email"]})
    assert response.status_code == 202
    first, second = await outbox("auth.email_verification_requested", user_id=user["id"])
    old = await client.post(
        "/api/v1/auth/verify-email/confirm", json={"token": first["data"]["token"]}
    )
    assert old.status_code == 400
    new = await client.post(
        "/api/v1/auth/verify-email/confirm", json={"token": second["data"]["token"]}
    )
    assert new.status_code == 204


async def test_request_answers_the_same_for_unknown_emails(
    client: httpx.AsyncClient, new_email: Callable[..., str]
) -> None:
    response = await client.post("/api/v1/auth/verify-email/request", json={"email": new_email()})
    assert response.status_code == 202


async def test_a_reset_token_does_not_verify_an_email(
    client: httpx.AsyncClient, signed_in: SignedIn, outbox: Outbox
) -> None:
    user, _ = await signed_in()
    await client.post("/api/v1/auth/password-reset/request", json={"email": user["email"]})
    [reset] = await outbox("auth.password_reset_requested", user_id=user["id"])
    response = await client.post(
        "/api/v1/auth/verify-email/confirm", json={"token": reset["data"]["token"]}
    )
    assert response.status_code == 400


async def test_an_expired_verification_token_is_refused(
    client: httpx.AsyncClient,
    signed_in: SignedIn,
    outbox: Outbox,
    expire_action_tokens: Callable[[str], Awaitable[None]],
) -> None:
    user, _ = await signed_in()
    [event] = await outbox("auth.email_verification_requested", user_id=user["id"])
    await expire_action_tokens(user["id"])
    response = await client.post(
        "/api/v1/auth/verify-email/confirm", json={"token": event["data"]["token"]}
    )
    assert response.status_code == 400


async def test_the_mailed_link_opens_login_when_verification_is_required(
    auth_settings_factory: Callable[..., Any],
    serve: Callable[..., Any],
    register: Callable[..., Awaitable[dict[str, Any]]],
    outbox: Outbox,
) -> None:
    from jose import jwt

    from auth_service.app import create_app

    async with serve(create_app(auth_settings_factory(require_verified_email=True))) as client:
        user = await register(client)
        body = {"email": user["email"], "password": user["password"]}
        assert (await client.post("/api/v1/auth/login", json=body)).status_code == 403
        [event] = await outbox("auth.email_verification_requested", user_id=user["id"])
        confirm = await client.post(
            "/api/v1/auth/verify-email/confirm", json={"token": event["data"]["token"]}
        )
        assert confirm.status_code == 204
        login = await client.post("/api/v1/auth/login", json=body)
        assert login.status_code == 200
        assert jwt.get_unverified_claims(login.json()["access_token"])["email_verified"] is True


async def test_no_token_or_password_reaches_the_logs(
    client: httpx.AsyncClient,
    register: Callable[..., Awaitable[dict[str, Any]]],
    outbox: Outbox,
    caplog: Any,
) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    user = await register(client)
    body = {"email": user["email"], "password": user["password"]}
    tokens = (await client.post("/api/v1/auth/login", json=body)).json()
    await client.post("/api/v1/auth/login", json={**body, "password": "a wrong one here"})
    await client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    [verify] = await outbox("auth.email_verification_requested", user_id=user["id"])
    await client.post("/api/v1/auth/verify-email/confirm", json={"token": verify["data"]["token"]})
    await client.post("/api/v1/auth/password-reset/request", json={"email": user["email"]})
    [reset] = await outbox("auth.password_reset_requested", user_id=user["id"])
    new_password = "seven amber lanterns glow"
    await client.post(
        "/api/v1/auth/password-reset/confirm",
        json={"token": reset["data"]["token"], "new_password": new_password},
    )
    secrets = [
        user["password"],
        new_password,
        tokens["refresh_token"],
        tokens["access_token"],
        verify["data"]["token"],
        reset["data"]["token"],
    ]
    logged = "\n".join(record.getMessage() + repr(record.__dict__) for record in caplog.records)
    assert caplog.records
    assert not [secret for secret in secrets if secret in logged]

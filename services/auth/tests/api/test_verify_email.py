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

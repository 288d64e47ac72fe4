"""POST /api/v1/auth/password-reset/{request,confirm}."""

from collections.abc import Awaitable, Callable
from typing import Any

import httpx

SignedIn = Callable[..., Awaitable[tuple[dict[str, Any], dict[str, Any]]]]
Outbox = Callable[..., Awaitable[list[dict[str, Any]]]]
Bearer = Callable[[dict[str, Any]], dict[str, str]]


async def _reset_token(client: httpx.AsyncClient, outbox: Outbox, user: dict[str, Any]) -> str:
    response = await client.post(
        "/api/v1/auth/password-reset/request", json={"email": user["email"]}
    )
    assert response.status_code == 202
    envelopes = await outbox("auth.password_reset_requested", user_id=user["id"])
    token: str = envelopes[-1]["data"]["token"]
    return token


async def test_request_answers_the_same_for_known_and_unknown_emails(
    client: httpx.AsyncClient,
    signed_in: SignedIn,
    new_email: Callable[..., str],
    outbox: Outbox,
) -> None:
    user, _ = await signed_in()
    known = await client.post("/api/v1/auth/password-reset/request", json={"email": user["email"]})
    unknown_email = new_email()
    unknown = await client.post(
        "/api/v1/auth/password-reset/request", json={"email": unknown_email}
    )
    assert known.status_code == unknown.status_code == 202
    assert known.content == unknown.content
    [event] = await outbox("auth.password_reset_requested", user_id=user["id"])
    assert event["data"]["email"] == user["email"] and event["data"]["expires_at"]
    everything = await outbox("auth.password_reset_requested")
    assert all(e["data"]["email"] != unknown_email for e in everything)


async def test_confirm_sets_the_password_and_ends_every_session(
    client: httpx.AsyncClient,
    signed_in: SignedIn,
    login: Callable[..., Awaitable[dict[str, Any]]],
    outbox: Outbox,
    auth_header: Bearer,
) -> None:
    user, tokens = await signed_in()
    token = await _reset_token(client, outbox, user)
    confirm = await client.post(
        "/api/v1/auth/password-reset/confirm",
        json={"token": token, "new_password": "seven amber lanterns glow"},
    )
    assert confirm.status_code == 204
    assert (await client.get("/api/v1/auth/me", headers=auth_header(tokens))).status_code == 401
    refresh = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert refresh.status_code == 401
    fresh = await login(client, user["email"], "seven amber lanterns glow")
    me = await client.get("/api/v1/auth/me", headers=auth_header(fresh))
    assert me.json()["email_verified"] is True


async def test_a_reset_token_works_once(
    client: httpx.AsyncClient, signed_in: SignedIn, outbox: Outbox
) -> None:
    user, _ = await signed_in()
    token = await _reset_token(client, outbox, user)
    body = {"token": token, "new_password": "seven amber lanterns glow"}
    assert (await client.post("/api/v1/auth/password-reset/confirm", json=body)).status_code == 204
    again = await client.post("/api/v1/auth/password-reset/confirm", json=body)
    assert again.status_code == 400


async def test_a_newer_request_voids_the_older_token(
    client: httpx.AsyncClient, signed_in: SignedIn, outbox: Outbox
) -> None:
    user, _ = await signed_in()
    older = await _reset_token(client, outbox, user)
    await _reset_token(client, outbox, user)
    response = await client.post(
        "/api/v1/auth/password-reset/confirm",
        json={"token": older, "new_password": "seven amber lanterns glow"},
    )
    assert response.status_code == 400


async def test_a_weak_new_password_leaves_the_token_usable(
    client: httpx.AsyncClient, signed_in: SignedIn, outbox: Outbox
) -> None:
    user, _ = await signed_in()
    token = await _reset_token(client, outbox, user)
    weak = await client.post(
        "/api/v1/auth/password-reset/confirm", json={"token": token, "new_password": "short"}
    )
    assert weak.status_code == 422 and weak.json()["rule"] == "too_short"
    strong = await client.post(
        "/api/v1/auth/password-reset/confirm",
        json={"token": token, "new_password": "seven amber lanterns glow"},
    )
    assert strong.status_code == 204


async def test_an_expired_token_is_refused(
    auth_settings_factory: Callable[..., Any],
    serve: Callable[..., Any],
    register: Callable[..., Awaitable[dict[str, Any]]],
    outbox: Outbox,
    expire_action_tokens: Callable[[str], Awaitable[None]],
) -> None:
    from auth_service.app import create_app

    async with serve(create_app(auth_settings_factory())) as client:
        user = await register(client)
        token = await _reset_token(client, outbox, user)
        await expire_action_tokens(user["id"])
        response = await client.post(
            "/api/v1/auth/password-reset/confirm",
            json={"token": token, "new_password": "seven amber lanterns glow"},
        )
        assert response.status_code == 400


async def test_unknown_token_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/auth/password-reset/confirm",
        json={"token": "made-up", "new_password": "seven amber lanterns glow"},
    )
    assert response.status_code == 400


async def test_requests_within_the_cooldown_email_nothing_more(
    auth_settings_factory: Callable[..., Any],
    serve: Callable[..., Any],
    register: Callable[..., Awaitable[dict[str, Any]]],
    outbox: Outbox,
) -> None:
    from auth_service.app import create_app

    settings = auth_settings_factory(email_token_cooldown_seconds=3600)
    async with serve(create_app(settings)) as client:
        user = await register(client)
        for path in ("password-reset", "password-reset", "verify-email", "verify-email"):
            response = await client.post(
                f"/api/v1/auth/{path}/request", json={"email": user["email"]}
            )
            assert response.status_code == 202
    # One reset token; and no verification token beyond the one sent at registration.
    assert len(await outbox("auth.password_reset_requested", user_id=user["id"])) == 1
    assert len(await outbox("auth.email_verification_requested", user_id=user["id"])) == 1


async def test_the_reset_token_is_sealed_in_the_outbox(
    client: httpx.AsyncClient,
    signed_in: Callable[..., Awaitable[tuple[dict[str, Any], dict[str, Any]]]],
    outbox: Callable[..., Awaitable[list[dict[str, Any]]]],
) -> None:
    user, _ = await signed_in()
    await client.post("/api/v1/auth/password-reset/request", json={"email": user["email"]})
    [event] = (await outbox("auth.password_reset_requested", user_id=user["id"]))[-1:]
    assert event["sealed_token"] != event["data"]["token"]
    assert event["data"]["token"] not in event["sealed_token"]

"""GET/PATCH /api/v1/auth/me, and every kind of bad token refused with 401."""

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from jose import jwt

from auth_service.app import create_app
from auth_service.plugin import KEYRING
from auth_service.settings import LoginThrottleSettings
from keelson.keys import SigningKey

SignedIn = Callable[..., Awaitable[tuple[dict[str, Any], dict[str, Any]]]]
Bearer = Callable[[dict[str, Any]], dict[str, str]]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(user_id: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": "keelson-auth",
        "aud": "keelson",
        "sub": user_id,
        "roles": ["user"],
        "scope": "profile:read",
        "jti": uuid.uuid4().hex,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


async def test_me_returns_the_caller(
    client: httpx.AsyncClient, signed_in: SignedIn, auth_header: Bearer
) -> None:
    user, tokens = await signed_in()
    response = await client.get("/api/v1/auth/me", headers=auth_header(tokens))
    assert response.status_code == 200
    assert response.json() == {k: v for k, v in user.items() if k != "password"}


async def test_me_without_a_token_is_401_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/auth/me")
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"] == "Bearer"


async def test_patch_me_changes_the_name(
    client: httpx.AsyncClient, signed_in: SignedIn, auth_header: Bearer
) -> None:
    _, tokens = await signed_in()
    response = await client.patch(
        "/api/v1/auth/me", json={"name": "Grace"}, headers=auth_header(tokens)
    )
    assert response.status_code == 200
    assert response.json()["name"] == "Grace"


async def test_patch_me_sets_an_e164_phone_announces_it_and_removes_it(
    client: httpx.AsyncClient,
    signed_in: SignedIn,
    auth_header: Bearer,
    outbox: Callable[..., Awaitable[list[dict[str, Any]]]],
) -> None:
    user, tokens = await signed_in()
    assert user["phone"] is None
    headers = auth_header(tokens)
    for bad in ("5551234567", "+0551234567", "+1 555 123 4567", "+1555", "+1" + "5" * 15, 15551234):
        refused = await client.patch("/api/v1/auth/me", json={"phone": bad}, headers=headers)
        assert refused.status_code == 422, bad
        assert refused.headers["content-type"] == "application/problem+json"

    response = await client.patch(
        "/api/v1/auth/me", json={"phone": "+15551234567"}, headers=headers
    )
    assert response.status_code == 200 and response.json()["phone"] == "+15551234567"
    again = await client.patch("/api/v1/auth/me", json={"phone": "+15551234567"}, headers=headers)
    assert again.status_code == 200
    assert (await client.get("/api/v1/auth/me", headers=headers)).json()["phone"] == "+15551234567"
    renamed = await client.patch("/api/v1/auth/me", json={"name": "Ada"}, headers=headers)
    assert renamed.json()["phone"] == "+15551234567"  # left as it was
    removed = await client.patch("/api/v1/auth/me", json={"phone": None}, headers=headers)
    assert removed.json()["phone"] is None

    changes = await outbox("auth.contact_changed", user_id=user["id"])
    assert [(e["data"]["email"], e["data"]["phone"]) for e in changes] == [
        (user["email"], "+15551234567"),
        (user["email"], None),
    ]  # one per change, none for a repeat or a rename


async def test_password_change_needs_the_current_password(
    client: httpx.AsyncClient, signed_in: SignedIn, auth_header: Bearer
) -> None:
    _, tokens = await signed_in()
    missing = await client.patch(
        "/api/v1/auth/me", json={"password": "brand new long phrase"}, headers=auth_header(tokens)
    )
    assert missing.status_code == 422
    wrong = await client.patch(
        "/api/v1/auth/me",
        json={"password": "brand new long phrase", "current_password": "a wrong guess here"},
        headers=auth_header(tokens),
    )
    assert wrong.status_code == 403


async def test_password_change_ends_the_other_sessions_only(
    client: httpx.AsyncClient,
    signed_in: SignedIn,
    login: Callable[..., Awaitable[dict[str, Any]]],
    auth_header: Bearer,
) -> None:
    user, here = await signed_in()
    elsewhere = await login(client, user["email"])
    response = await client.patch(
        "/api/v1/auth/me",
        json={"password": "brand new long phrase", "current_password": user["password"]},
        headers=auth_header(here),
    )
    assert response.status_code == 200
    assert (await client.get("/api/v1/auth/me", headers=auth_header(here))).status_code == 200
    assert (await client.get("/api/v1/auth/me", headers=auth_header(elsewhere))).status_code == 401
    stale = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": elsewhere["refresh_token"]}
    )
    assert stale.status_code == 401
    still = await client.post("/api/v1/auth/refresh", json={"refresh_token": here["refresh_token"]})
    assert still.status_code == 200
    old = await client.post(
        "/api/v1/auth/login", json={"email": user["email"], "password": user["password"]}
    )
    assert old.status_code == 401
    await login(client, user["email"], "brand new long phrase")


async def test_a_token_made_like_the_forgeries_but_sound_is_accepted(
    client: httpx.AsyncClient, auth_app: FastAPI, signed_in: SignedIn
) -> None:
    # The control for the test below: its 401s come from the one thing each forgery changes.
    user, _ = await signed_in()
    token = auth_app.state.container.resolve(KEYRING).sign(_claims(user["id"]))
    response = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200


@pytest.mark.parametrize(
    "forgery",
    [
        "expired",
        "not_yet_valid",
        "wrong_audience",
        "wrong_issuer",
        "tampered",
        "alg_none",
        "hs256_with_public_key",
        "unknown_kid",
        "no_kid",
        "no_exp",
        "garbage",
    ],
)
async def test_bad_tokens_are_refused_with_401(
    client: httpx.AsyncClient, auth_app: FastAPI, signed_in: SignedIn, forgery: str
) -> None:
    user, tokens = await signed_in()
    keyring = auth_app.state.container.resolve(KEYRING)
    now = int(time.time())
    uid = user["id"]
    if forgery == "expired":
        token = keyring.sign(_claims(uid, iat=now - 1000, nbf=now - 1000, exp=now - 600))
    elif forgery == "not_yet_valid":
        token = keyring.sign(_claims(uid, nbf=now + 600, exp=now + 900))
    elif forgery == "wrong_audience":
        token = keyring.sign(_claims(uid, aud="someone-else"))
    elif forgery == "wrong_issuer":
        token = keyring.sign(_claims(uid, iss="https://evil.example"))
    elif forgery == "no_exp":
        token = keyring.sign(_claims(uid, exp=None))
    elif forgery == "tampered":
        header, payload, signature = tokens["access_token"].split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
        claims["roles"] = ["admin"]
        token = ".".join([header, _b64(json.dumps(claims).encode()), signature])
    elif forgery == "alg_none":
        header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": keyring.active.kid}).encode())
        token = f"{header}.{_b64(json.dumps(_claims(uid)).encode())}."
    elif forgery == "hs256_with_public_key":
        # The classic confusion: HMAC keyed with the (public) verification key.
        secret = keyring.active.verifier.to_pem()
        header = _b64(
            json.dumps({"alg": "HS256", "typ": "JWT", "kid": keyring.active.kid}).encode()
        )
        body = _b64(json.dumps(_claims(uid)).encode())
        mac = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
        token = f"{header}.{body}.{_b64(mac)}"
    elif forgery in ("unknown_kid", "no_kid"):
        stranger = SigningKey.generate()
        headers = {"kid": stranger.kid} if forgery == "unknown_kid" else {}
        token = jwt.encode(_claims(uid), stranger.private_pem, algorithm="ES256", headers=headers)
    else:
        token = "not.a.jwt"
    response = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401, forgery
    assert response.headers["content-type"] == "application/problem+json"


async def test_wrong_current_passwords_count_as_failed_logins(
    auth_settings_factory: Callable[..., Any],
    serve: Callable[..., Any],
    register: Callable[..., Awaitable[dict[str, Any]]],
    login: Callable[..., Awaitable[dict[str, Any]]],
    auth_header: Bearer,
) -> None:
    throttle = LoginThrottleSettings(max_account_failures=2, max_ip_failures=1000)
    async with serve(create_app(auth_settings_factory(throttle=throttle))) as client:
        user = await register(client)
        headers = auth_header(await login(client, user["email"]))
        guess = {"password": "brand new long phrase", "current_password": "a wrong guess here"}
        assert (
            await client.patch("/api/v1/auth/me", json=guess, headers=headers)
        ).status_code == 403
        locking = await client.patch("/api/v1/auth/me", json=guess, headers=headers)
        assert locking.status_code == 429 and locking.headers["retry-after"]
        right = {**guess, "current_password": user["password"]}
        assert (
            await client.patch("/api/v1/auth/me", json=right, headers=headers)
        ).status_code == 429
        again = await client.post(
            "/api/v1/auth/login", json={"email": user["email"], "password": user["password"]}
        )
        assert again.status_code == 429


async def test_a_refused_password_change_changes_nothing(
    client: httpx.AsyncClient, signed_in: SignedIn, auth_header: Bearer
) -> None:
    _, tokens = await signed_in()
    response = await client.patch(
        "/api/v1/auth/me",
        json={"name": "Mallory", "password": "brand new long phrase", "current_password": "nope"},
        headers=auth_header(tokens),
    )
    assert response.status_code == 403
    me = await client.get("/api/v1/auth/me", headers=auth_header(tokens))
    assert me.json()["name"] == "Ada"

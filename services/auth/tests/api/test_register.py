"""POST /api/v1/auth/register."""

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

Outbox = Callable[..., Awaitable[list[dict[str, Any]]]]


async def test_register_returns_the_account_and_publishes_events(
    client: httpx.AsyncClient, new_email: Callable[..., str], password: str, outbox: Outbox
) -> None:
    email = new_email()
    response = await client.post(
        "/api/v1/auth/register",
        json={"email": f"  {email.upper()} ", "password": password, "name": "Ada"},
    )
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"id", "email", "name", "roles", "email_verified", "created_at"}
    assert body["email"] == email
    assert body["roles"] == ["user"]
    assert body["email_verified"] is False
    [registered] = await outbox("auth.user_registered", user_id=body["id"])
    assert registered["data"] == {"user_id": body["id"], "email": email, "name": "Ada"}
    assert registered["producer"] == "auth"
    [verification] = await outbox("auth.email_verification_requested", user_id=body["id"])
    assert verification["data"]["token"]


async def test_taken_email_is_409_and_says_nothing_more(
    client: httpx.AsyncClient, new_email: Callable[..., str], password: str
) -> None:
    email = new_email()
    first = await client.post("/api/v1/auth/register", json={"email": email, "password": password})
    assert first.status_code == 201
    again = await client.post(
        "/api/v1/auth/register", json={"email": email.upper(), "password": password + " x"}
    )
    assert again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"
    problem = again.json()
    assert problem["detail"] == "an account with this email already exists"
    assert first.json()["id"] not in again.text


@pytest.mark.parametrize(
    ("password", "rule"),
    [
        ("short one", "too_short"),
        ("password1234", "common"),
        ("qwertyuiop123", "common"),
        ("1234567890123", "common"),
        ("aaaaaaaaaaaaaaaa", "repetitive"),
        ("abababababababab", "repetitive"),
        ("", "too_short"),
        ("correct horse battery " * 50, "too_long"),
    ],
)
async def test_weak_passwords_are_422_naming_the_rule(
    client: httpx.AsyncClient, new_email: Callable[..., str], password: str, rule: str
) -> None:
    response = await client.post(
        "/api/v1/auth/register", json={"email": new_email(), "password": password}
    )
    assert response.status_code == 422
    assert response.json()["rule"] == rule
    assert not password or password not in response.text


async def test_password_containing_the_email_is_refused(client: httpx.AsyncClient) -> None:
    email = f"margaret-{__import__('uuid').uuid4().hex[:6]}@example.com"
    response = await client.post(
        "/api/v1/auth/register",
        json={"email": email, "password": f"my name is {email.split('@')[0]}"},
    )
    assert response.status_code == 422
    assert response.json()["rule"] == "contains_email"


async def test_a_pass_phrase_is_welcome(
    client: httpx.AsyncClient, new_email: Callable[..., str]
) -> None:
    response = await client.post(
        "/api/v1/auth/register",
        json={"email": new_email(), "password": "violet kettles hum at dawn"},
    )
    assert response.status_code == 201


@pytest.mark.parametrize("email", ["not-an-email", "two@@example.com", "x@", ""])
async def test_invalid_email_is_422(client: httpx.AsyncClient, email: str, password: str) -> None:
    response = await client.post(
        "/api/v1/auth/register", json={"email": email, "password": password}
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"

"""POST /api/v1/auth/register."""

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from auth_service.app import create_app

Outbox = Callable[..., Awaitable[list[dict[str, Any]]]]
Stored = Callable[[str], Awaitable[dict[str, Any] | None]]


async def test_sign_up_creates_an_unverified_account_and_publishes_events(
    client: httpx.AsyncClient,
    new_email: Callable[..., str],
    password: str,
    outbox: Outbox,
    stored_account: Stored,
) -> None:
    email = new_email()
    response = await client.post(
        "/api/v1/auth/register",
        json={"email": f"  {email.upper()} ", "password": password, "name": "Ada"},
    )
    assert response.status_code == 202
    assert set(response.json()) == {"detail"}
    account = await stored_account(email)
    assert account is not None
    assert account["roles"] == ["user"] and account["email_verified"] is False
    [registered] = await outbox("auth.user_registered", user_id=account["id"])
    assert registered["data"] == {"user_id": account["id"], "email": email, "name": "Ada"}
    assert registered["producer"] == "auth"
    [verification] = await outbox("auth.email_verification_requested", user_id=account["id"])
    assert verification["data"]["token"]


def _comparable(response: httpx.Response) -> tuple[int, bytes, dict[str, str]]:
    headers = {k: v for k, v in response.headers.items() if k not in {"x-request-id", "date"}}
    return response.status_code, response.content, headers


async def test_a_taken_email_gets_the_same_answer_and_its_owner_is_told(
    client: httpx.AsyncClient,
    new_email: Callable[..., str],
    password: str,
    outbox: Outbox,
    stored_account: Stored,
    login: Callable[..., Awaitable[dict[str, Any]]],
) -> None:
    email, fresh = new_email(), new_email()
    first = await client.post("/api/v1/auth/register", json={"email": email, "password": password})
    again = await client.post(
        "/api/v1/auth/register", json={"email": email.upper(), "password": password + " x"}
    )
    other = await client.post("/api/v1/auth/register", json={"email": fresh, "password": password})
    assert _comparable(again) == _comparable(first) == _comparable(other)
    account = await stored_account(email)
    assert account is not None
    # Nothing about the account changed: the first password still works.
    await login(client, email, password)
    assert len(await outbox("auth.user_registered", user_id=account["id"])) == 1
    [told] = await outbox("auth.signup_for_existing_account", user_id=account["id"])
    assert told["data"] == {"user_id": account["id"], "email": email}
    assert len(await outbox("auth.email_verification_requested", user_id=account["id"])) == 1


async def test_the_password_is_hashed_whether_or_not_the_email_is_taken(
    client: httpx.AsyncClient, new_email: Callable[..., str], password: str
) -> None:
    def hashes() -> float:
        return (
            REGISTRY.get_sample_value("auth_password_hashing_seconds_count", {"operation": "hash"})
            or 0.0
        )

    email = new_email()
    before = hashes()
    await client.post("/api/v1/auth/register", json={"email": email, "password": password})
    assert hashes() == before + 1
    await client.post("/api/v1/auth/register", json={"email": email, "password": password})
    assert hashes() == before + 2


async def test_the_owner_is_told_at_most_once_per_cooldown(
    auth_settings_factory: Callable[..., Any],
    serve: Callable[..., Any],
    new_email: Callable[..., str],
    password: str,
    outbox: Outbox,
    stored_account: Stored,
) -> None:
    async with serve(create_app(auth_settings_factory(email_token_cooldown_seconds=600))) as c:
        email = new_email()
        for _ in range(3):
            response = await c.post(
                "/api/v1/auth/register", json={"email": email, "password": password}
            )
            assert response.status_code == 202
    account = await stored_account(email)
    assert account is not None
    assert len(await outbox("auth.signup_for_existing_account", user_id=account["id"])) == 1


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
    assert response.status_code == 202


@pytest.mark.parametrize("email", ["not-an-email", "two@@example.com", "x@", ""])
async def test_invalid_email_is_422(client: httpx.AsyncClient, email: str, password: str) -> None:
    response = await client.post(
        "/api/v1/auth/register", json={"email": email, "password": password}
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"


async def test_a_retry_with_the_same_idempotency_key_changes_nothing(
    client: httpx.AsyncClient,
    new_email: Callable[..., str],
    password: str,
    outbox: Outbox,
    stored_account: Stored,
) -> None:
    """Sent: one sign-up three times with one Idempotency-Key, twice of them at once.
    Holds: every answer is the same 202, one account, one verification mail asked for,
    and no 'someone signed up with your address' mail (a retry without the key sends it)."""
    import asyncio
    import uuid

    email = new_email()
    body = {"email": email, "password": password}
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    answers = await asyncio.gather(
        client.post("/api/v1/auth/register", json=body, headers=headers),
        client.post("/api/v1/auth/register", json=body, headers=headers),
    )
    answers.append(await client.post("/api/v1/auth/register", json=body, headers=headers))
    assert {a.status_code for a in answers} == {202}
    assert _comparable(answers[0]) == _comparable(answers[1]) == _comparable(answers[2])
    account = await stored_account(email)
    assert account is not None
    assert len(await outbox("auth.user_registered", user_id=account["id"])) == 1
    assert len(await outbox("auth.email_verification_requested", user_id=account["id"])) == 1
    assert await outbox("auth.signup_for_existing_account", user_id=account["id"]) == []


async def test_an_idempotency_key_reused_with_another_body_is_409_and_does_nothing(
    client: httpx.AsyncClient, new_email: Callable[..., str], password: str, stored_account: Stored
) -> None:
    first, second = new_email(), new_email()
    headers = {"Idempotency-Key": "sign-up-attempt-1-" + first}
    ok = await client.post(
        "/api/v1/auth/register", json={"email": first, "password": password}, headers=headers
    )
    assert ok.status_code == 202
    reused = await client.post(
        "/api/v1/auth/register", json={"email": second, "password": password}, headers=headers
    )
    assert reused.status_code == 409, reused.text
    assert reused.headers["content-type"] == "application/problem+json"
    assert password not in reused.text
    assert await stored_account(second) is None


@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "tab\tkey"])
async def test_a_malformed_idempotency_key_is_422(
    client: httpx.AsyncClient, new_email: Callable[..., str], password: str, key: str
) -> None:
    response = await client.post(
        "/api/v1/auth/register",
        json={"email": new_email(), "password": password},
        headers={"Idempotency-Key": key},
    )
    assert response.status_code == 422, response.text

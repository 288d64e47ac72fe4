"""Inputs PostgreSQL cannot hold, or that would forge lines, are refused with 422, never 500."""

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

PASSWORD = "plum tractors sing quietly"
CONTROL = ["\x00", "\x07", "\x1b[31m", "\u0085", "\x7f"]


@pytest.mark.parametrize("char", CONTROL, ids=repr)
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/auth/register", {"email": "a{c}@example.com", "password": PASSWORD}),
        ("/api/v1/auth/register", {"email": "n@example.com", "password": PASSWORD, "name": "x{c}"}),
        ("/api/v1/auth/login", {"email": "a{c}@example.com", "password": PASSWORD}),
        ("/api/v1/auth/password-reset/request", {"email": "a{c}@example.com"}),
        ("/api/v1/auth/verify-email/request", {"email": "a{c}@example.com"}),
        ("/api/v1/auth/refresh", {"refresh_token": "abc{c}def"}),
        ("/api/v1/auth/verify-email/confirm", {"token": "abc{c}def"}),
    ],
)
async def test_control_characters_in_text_are_refused(
    client: httpx.AsyncClient, path: str, body: dict[str, str], char: str
) -> None:
    sent = {key: value.replace("{c}", char) for key, value in body.items()}
    response = await client.post(path, json=sent)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert "control characters" in response.text


async def test_a_name_on_one_line_is_still_welcome(
    client: httpx.AsyncClient, new_email: Callable[..., str]
) -> None:
    body = {"email": new_email(), "password": PASSWORD, "name": "Zoë O'Brien-Łukasz 山田"}
    response = await client.post("/api/v1/auth/register", json=body)
    assert response.status_code == 202, response.text


@pytest.mark.parametrize(
    "params",
    [{"offset": str(10**20)}, {"offset": "1000001"}, {"email": "a\x00b"}],
    ids=["huge-offset", "offset-past-bound", "nul-in-filter"],
)
async def test_admin_list_parameters_are_bounded(
    client: httpx.AsyncClient,
    register: Callable[..., Awaitable[dict[str, Any]]],
    login: Callable[..., Awaitable[dict[str, Any]]],
    grant_admin: Callable[[str], Awaitable[None]],
    auth_header: Callable[[dict[str, Any]], dict[str, str]],
    params: dict[str, str],
) -> None:
    user = await register(client)
    await grant_admin(user["id"])
    headers = auth_header(await login(client, user["email"]))
    response = await client.get("/api/v1/auth/users", params=params, headers=headers)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"

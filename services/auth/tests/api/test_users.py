"""User administration: /api/v1/auth/users, for admins only."""

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

SignedIn = Callable[..., Awaitable[tuple[dict[str, Any], dict[str, Any]]]]
Bearer = Callable[[dict[str, Any]], dict[str, str]]


@pytest.fixture
async def admin(
    client: httpx.AsyncClient,
    register: Callable[..., Awaitable[dict[str, Any]]],
    login: Callable[..., Awaitable[dict[str, Any]]],
    grant_admin: Callable[[str], Awaitable[None]],
    auth_header: Bearer,
) -> dict[str, str]:
    user = await register(client)
    await grant_admin(user["id"])
    return auth_header(await login(client, user["email"]))


async def test_non_admins_get_403_everywhere(
    client: httpx.AsyncClient, signed_in: SignedIn, auth_header: Bearer
) -> None:
    user, tokens = await signed_in()
    headers = auth_header(tokens)
    path = f"/api/v1/auth/users/{user['id']}"
    assert (await client.get("/api/v1/auth/users", headers=headers)).status_code == 403
    assert (await client.get(path, headers=headers)).status_code == 403
    assert (await client.patch(path, json={"roles": ["admin"]}, headers=headers)).status_code == 403
    assert (await client.delete(path, headers=headers)).status_code == 403
    assert (await client.get("/api/v1/auth/users")).status_code == 401


async def test_list_filters_by_email_and_pages(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    register: Callable[..., Awaitable[dict[str, Any]]],
    new_email: Callable[..., str],
) -> None:
    marker = new_email("page")[:17]
    created = [await register(client, f"{marker}-{i}@example.com") for i in range(3)]
    first = await client.get(
        "/api/v1/auth/users", params={"email": marker.upper(), "limit": 2}, headers=admin
    )
    assert first.status_code == 200
    page = first.json()
    assert page["total"] == 3 and page["limit"] == 2 and page["offset"] == 0
    second = await client.get(
        "/api/v1/auth/users", params={"email": marker, "limit": 2, "offset": 2}, headers=admin
    )
    ids = [u["id"] for u in page["items"]] + [u["id"] for u in second.json()["items"]]
    assert ids == [u["id"] for u in created]
    assert page["items"][0]["is_active"] is True


async def test_email_filter_treats_wildcards_literally(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    response = await client.get("/api/v1/auth/users", params={"email": "%"}, headers=admin)
    assert response.status_code == 200
    assert response.json()["total"] == 0


async def test_get_patch_and_delete_a_user(
    client: httpx.AsyncClient, admin: dict[str, str], signed_in: SignedIn, auth_header: Bearer
) -> None:
    user, tokens = await signed_in()
    path = f"/api/v1/auth/users/{user['id']}"
    assert (await client.get(path, headers=admin)).json()["email"] == user["email"]

    promoted = await client.patch(path, json={"roles": ["user", "admin"]}, headers=admin)
    assert promoted.status_code == 200
    assert promoted.json()["roles"] == ["admin", "user"]
    # A change of roles ends the user's sessions: the next login carries the new roles.
    assert (await client.get("/api/v1/auth/me", headers=auth_header(tokens))).status_code == 401

    deactivated = await client.patch(path, json={"is_active": False}, headers=admin)
    assert deactivated.json()["is_active"] is False
    login = await client.post(
        "/api/v1/auth/login", json={"email": user["email"], "password": user["password"]}
    )
    assert login.status_code == 401

    assert (await client.delete(path, headers=admin)).status_code == 204
    assert (await client.get(path, headers=admin)).status_code == 404
    assert (await client.delete(path, headers=admin)).status_code == 404


async def test_unknown_roles_are_422(
    client: httpx.AsyncClient, admin: dict[str, str], signed_in: SignedIn
) -> None:
    user, _ = await signed_in()
    response = await client.patch(
        f"/api/v1/auth/users/{user['id']}", json={"roles": ["emperor"]}, headers=admin
    )
    assert response.status_code == 422


async def test_the_last_admin_cannot_be_removed(
    no_admins: None,
    client: httpx.AsyncClient,
    register: Callable[..., Awaitable[dict[str, Any]]],
    login: Callable[..., Awaitable[dict[str, Any]]],
    grant_admin: Callable[[str], Awaitable[None]],
    auth_header: Bearer,
) -> None:
    user = await register(client)
    await grant_admin(user["id"])
    headers = auth_header(await login(client, user["email"]))
    path = f"/api/v1/auth/users/{user['id']}"
    assert (await client.patch(path, json={"roles": ["user"]}, headers=headers)).status_code == 409
    assert (await client.patch(path, json={"is_active": False}, headers=headers)).status_code == 409
    assert (await client.delete(path, headers=headers)).status_code == 409
    assert (
        await client.patch(path, json={"name": "Still Admin"}, headers=headers)
    ).status_code == 200

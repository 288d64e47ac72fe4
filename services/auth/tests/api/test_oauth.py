"""The token endpoint as a standard OAuth2 client sees it (authlib), and RFC 8414 metadata
with the JWKS read by PyJWT's `PyJWKClient`."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError
from fastapi import FastAPI

from auth_service.app import create_app
from keelson.auth import DEFAULT_AUDIENCE, DEFAULT_ISSUER
from keelson_dev.testing import LiveServer

TOKEN_URL = "http://auth.test/api/v1/auth/token"
Register = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture
async def oauth(auth_app: FastAPI) -> AsyncIterator[AsyncOAuth2Client]:
    """authlib's client for a public client (no secret), talking to the app in-process."""
    transport = httpx.ASGITransport(app=auth_app, client=("198.51.100.21", 40000))
    async with AsyncOAuth2Client(
        client_id="keelson-cli", token_endpoint_auth_method="none", transport=transport
    ) as client:
        yield client


async def test_the_password_grant_gives_a_token_authlib_can_use(
    oauth: AsyncOAuth2Client, client: httpx.AsyncClient, register: Register
) -> None:
    user = await register(client)
    token = await oauth.fetch_token(
        TOKEN_URL, username=user["email"], password=user["password"], scope="profile:read"
    )
    assert token["token_type"].lower() == "bearer"
    assert token["scope"] == "profile:read"
    assert token["refresh_token"] and token["expires_in"] == 900
    me = await oauth.get("http://auth.test/api/v1/auth/me")  # authlib adds the bearer token
    assert me.status_code == 200 and me.json()["id"] == user["id"]


async def test_a_wrong_password_is_an_invalid_grant_error_not_a_token(
    oauth: AsyncOAuth2Client, client: httpx.AsyncClient, register: Register
) -> None:
    user = await register(client)
    with pytest.raises(OAuthError) as caught:
        await oauth.fetch_token(TOKEN_URL, username=user["email"], password="not the password")
    assert caught.value.error == "invalid_grant"
    assert caught.value.description == "incorrect email or password"


async def test_the_refresh_token_grant_through_authlib(
    oauth: AsyncOAuth2Client, client: httpx.AsyncClient, register: Register
) -> None:
    user = await register(client)
    first = await oauth.fetch_token(TOKEN_URL, username=user["email"], password=user["password"])
    second = await oauth.refresh_token(TOKEN_URL, refresh_token=first["refresh_token"])
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert (await oauth.get("http://auth.test/api/v1/auth/me")).status_code == 200
    with pytest.raises(OAuthError) as caught:
        await oauth.refresh_token(TOKEN_URL, refresh_token="made-up")
    assert caught.value.error == "invalid_grant"


async def _token(client: httpx.AsyncClient, **form: str) -> httpx.Response:
    return await client.post("/api/v1/auth/token", data=form)


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({}, "invalid_request"),
        ({"grant_type": "client_credentials"}, "unsupported_grant_type"),
        ({"grant_type": "authorization_code", "code": "x"}, "unsupported_grant_type"),
        ({"grant_type": "password", "username": "a@example.com"}, "invalid_request"),
        ({"grant_type": "refresh_token"}, "invalid_request"),
        (
            {"grant_type": "password", "username": "a\x00@example.com", "password": "p"},
            "invalid_request",
        ),
        ({"grant_type": "password", "username": "a" * 2000, "password": "p"}, "invalid_request"),
    ],
)
async def test_bad_token_requests_get_rfc_6749_error_bodies(
    client: httpx.AsyncClient, form: dict[str, str], error: str
) -> None:
    response = await _token(client, **form)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"error", "error_description"} and body["error"] == error


async def test_a_json_body_is_an_invalid_request(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/auth/token", json={"grant_type": "password"})
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"


async def test_other_routes_still_answer_problem_json(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/auth/refresh", json={"refresh_token": "made-up"})
    assert response.headers["content-type"] == "application/problem+json"


async def test_a_locked_account_is_temporarily_unavailable_with_retry_after(
    client: httpx.AsyncClient, register: Register
) -> None:
    user = await register(client)
    for _ in range(5):
        await _token(client, grant_type="password", username=user["email"], password="wrong one")
    locked = await _token(
        client, grant_type="password", username=user["email"], password=user["password"]
    )
    assert locked.status_code == 429
    assert locked.json()["error"] == "temporarily_unavailable"
    assert int(locked.headers["retry-after"]) > 0


async def test_metadata_and_jwks_let_a_standard_client_verify_the_token(
    auth_settings_factory: Callable[..., Any], new_email: Callable[..., str], password: str
) -> None:
    with LiveServer(create_app(auth_settings_factory())) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            email = new_email()
            await client.post("/api/v1/auth/register", json={"email": email, "password": password})
            metadata = (await client.get("/.well-known/oauth-authorization-server")).json()
            assert metadata["issuer"] == DEFAULT_ISSUER
            assert metadata["token_endpoint"] == f"{server.url}/api/v1/auth/token"
            assert metadata["grant_types_supported"] == ["password", "refresh_token"]
            assert "logs:read" in metadata["scopes_supported"]
            assert metadata["token_endpoint_auth_methods_supported"] == ["none"]
            async with AsyncOAuth2Client(
                client_id="keelson-cli", token_endpoint_auth_method="none"
            ) as oauth:
                token = await oauth.fetch_token(
                    metadata["token_endpoint"], username=email, password=password
                )
        jwks = pyjwt.PyJWKClient(metadata["jwks_uri"])
        key = await asyncio.to_thread(jwks.get_signing_key_from_jwt, token["access_token"])
        claims = pyjwt.decode(
            token["access_token"],
            key.key,
            algorithms=["ES256"],
            audience=DEFAULT_AUDIENCE,
            issuer=metadata["issuer"],
        )
    assert claims["email_verified"] is False and claims["sub"]


async def test_metadata_uses_the_configured_public_url(
    auth_settings_factory: Callable[..., Any], serve: Callable[..., Any]
) -> None:
    settings = auth_settings_factory(public_url="https://api.example.com")
    async with serve(create_app(settings)) as client:
        metadata = (await client.get("/.well-known/oauth-authorization-server")).json()
    assert metadata["token_endpoint"] == "https://api.example.com/api/v1/auth/token"
    assert metadata["jwks_uri"] == "https://api.example.com/.well-known/jwks.json"

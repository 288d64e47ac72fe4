"""The gateway in front of the real auth service (its app, Postgres and Redis)."""

import uuid
from collections.abc import Iterator

import pytest
from gateway_testkit import (
    ServerThread,
    gateway_settings,
    running_gateway,
    upstreams_config,
)

from auth_service.app import create_app as create_auth_app
from auth_service.settings import AuthSettings, PasswordHashSettings
from auth_service.settings import Settings as AuthServiceSettings
from keelson_dev.testing import eventually, make_settings, migrated

PASSWORD = "plum tractors sing quietly"


@pytest.fixture(scope="module")
def auth_service_server(test_database_url: str, redis_url: str) -> Iterator[ServerThread]:
    migrated(test_database_url, "auth_service")
    settings = make_settings(
        AuthServiceSettings,
        database_url=test_database_url,
        redis_url=redis_url,
        auth=AuthSettings(
            password=PasswordHashSettings(time_cost=1, memory_cost=1024, parallelism=1)
        ),
    )
    server = ServerThread(create_auth_app(settings), lifespan="on").start()
    yield server
    server.stop()


async def test_login_me_and_logout_through_the_gateway(
    auth_service_server: ServerThread, upstream: ServerThread, redis_url: str
) -> None:
    settings = gateway_settings(
        redis_url=redis_url,
        routing=upstreams_config(auth=auth_service_server.url, logs=upstream.url),
        security={"default_policy": "user"},
        rate_limiting={"key_prefix": f"auth-e2e-{uuid.uuid4().hex[:6]}"},
    )
    email = f"gw-{uuid.uuid4().hex[:8]}@example.com"
    async with running_gateway(settings) as (_, client):
        keys = await client.get("/.well-known/jwks.json")
        assert keys.status_code == 200 and keys.json()["keys"]
        registered = await client.post(
            "/api/v1/auth/register", json={"email": email, "password": PASSWORD}
        )
        assert registered.status_code == 202, registered.text
        login = await client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        assert login.status_code == 200, login.text
        assert login.headers["ratelimit-limit"] == "10"
        bearer = {"Authorization": f"Bearer {login.json()['access_token']}"}

        me = await client.get("/api/v1/auth/me", headers=bearer)
        assert me.status_code == 200 and me.json()["email"] == email
        # a gateway-protected upstream route accepts the auth service's token
        assert (await client.get("/api/v1/logs/echo", headers=bearer)).status_code == 200

        forged = {"X-Keelson-User": me.json()["id"], "X-Keelson-Roles": "admin"}
        assert (await client.get("/api/v1/auth/me", headers=forged)).status_code == 401

        # logging out revokes the access token; the gateway, which has it cached, hears it
        out = await client.post("/api/v1/auth/logout", headers=bearer)
        assert out.status_code == 204, out.text

        async def refused() -> bool:
            response = await client.get("/api/v1/logs/echo", headers=bearer)
            return response.status_code == 401

        await eventually(refused)

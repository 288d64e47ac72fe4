"""A request made through the gateway can be followed across every service by its request id.

The log service, the auth service and the gateway run as real processes (`python -m <pkg>`)
on free ports, each shipping its log records over ZeroMQ to the log service; the records of
one request are then found through the log service's API, asked through the gateway.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from keelson.db import plain_url
from keelson_dev.embedded import free_port
from keelson_dev.testing import (
    ServiceProcess,
    eventually,
    fresh_database,
    gateway_process,
    migrated,
)

ADMIN_EMAIL = "tracing-admin@example.com"
PASSWORD = "plum tractors sing quietly"


@pytest.fixture(scope="module")
def tracing_database(postgres_server_url: str) -> Iterator[str]:
    """A database of its own, so that the auth service makes its first admin at start."""
    with fresh_database(postgres_server_url, prefix="keelson_tracing") as url:
        yield url


@pytest.fixture(scope="module")
async def services(
    tracing_database: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, ServiceProcess]]:
    await asyncio.to_thread(migrated, tracing_database, "auth_service", "logs_service")
    workdir = tmp_path_factory.mktemp("tracing")
    ship = f"tcp://127.0.0.1:{free_port()}"
    auth = ServiceProcess(
        "auth_service",
        workdir,
        {
            "KEELSON_DATABASE_URL": tracing_database,
            "KEELSON_REDIS_URL": redis_url,
            "KEELSON_LOG__SHIP_ENDPOINT": ship,
            "KEELSON_ADMIN_EMAIL": ADMIN_EMAIL,
            "KEELSON_ADMIN_PASSWORD": PASSWORD,
            "KEELSON_AUTH__PASSWORD__TIME_COST": "1",
            "KEELSON_AUTH__PASSWORD__MEMORY_COST": "1024",
            "KEELSON_AUTH__PASSWORD__PARALLELISM": "1",
        },
    )
    logs = ServiceProcess(
        "logs_service",
        workdir,
        {
            "KEELSON_DATABASE_URL": plain_url(tracing_database),
            "KEELSON_REDIS_URL": redis_url,
            "KEELSON_LOGS__BIND_ENDPOINT": ship,
            "KEELSON_LOGS__BATCH_MAX_SECONDS": "0.05",
            "KEELSON_LOG__SHIP_ENDPOINT": ship,
            "KEELSON_PLUGINS__AUTH__JWKS_URL": f"{auth.url}/.well-known/jwks.json",
        },
    )
    gateway = gateway_process(
        workdir,
        {"auth": auth.url, "logs": logs.url},
        redis_url=redis_url,
        env={"KEELSON_LOG__SHIP_ENDPOINT": ship},
    )
    running = {"logs": logs, "auth": auth, "gateway": gateway}
    try:
        for process in running.values():
            await process.wait_for("/health/ready")
        yield running
    finally:
        for process in running.values():
            process.stop()


async def records_by_service(
    client: httpx.AsyncClient, admin: dict[str, str], request_id: str
) -> dict[str, list[dict[str, Any]]]:
    """Poll the log service (through the gateway) until gateway and auth records are in."""

    async def traced() -> dict[str, list[dict[str, Any]]]:
        page = await client.get("/api/v1/logs", params={"request_id": request_id}, headers=admin)
        assert page.status_code == 200, page.text
        by_service: dict[str, list[dict[str, Any]]] = {}
        for item in page.json()["items"]:
            by_service.setdefault(item["service"], []).append(item)
        return by_service if {"gateway", "auth"} <= by_service.keys() else {}

    return await eventually(traced, timeout=20, interval=0.2)


@pytest.mark.parametrize("client_sends_id", [True, False], ids=["client-id", "gateway-id"])
async def test_a_request_is_followed_across_services_by_its_request_id(
    services: dict[str, ServiceProcess], client_sends_id: bool
) -> None:
    sent = {"X-Request-ID": f"trace-{uuid.uuid4().hex}"} if client_sends_id else {}
    email = f"traced-{uuid.uuid4().hex[:8]}@example.com"
    async with httpx.AsyncClient(base_url=services["gateway"].url, timeout=10) as client:
        registered = await client.post(
            "/api/v1/auth/register", json={"email": email, "password": PASSWORD}, headers=sent
        )
        assert registered.status_code == 202, registered.text
        (request_id,) = registered.headers.get_list("x-request-id")
        if client_sends_id:
            assert request_id == sent["X-Request-ID"]

        login = await client.post(
            "/api/v1/auth/login", json={"email": ADMIN_EMAIL, "password": PASSWORD}
        )
        assert login.status_code == 200, login.text
        admin = {"Authorization": f"Bearer {login.json()['access_token']}"}
        by_service = await records_by_service(client, admin, request_id)

    assert set(by_service) == {"gateway", "auth"}  # the log service took no part in it
    records = [record for found in by_service.values() for record in found]
    assert {record["request_id"] for record in records} == {request_id}
    assert len({record["trace_id"] for record in records}) == 1  # one W3C trace, too
    # one access record in each service, naming the route template and the outcome
    (gateway_access,) = [r for r in by_service["gateway"] if r["logger"] == "gateway.access"]
    (auth_access,) = [r for r in by_service["auth"] if r["logger"] == "keelson.access"]
    for access in (gateway_access, auth_access):
        assert access["attrs"]["method"] == "POST"
        assert access["attrs"]["route"] == "/api/v1/auth/register"
        assert access["attrs"]["status"] == 202
    assert not [r for r in by_service["gateway"] if r["logger"] == "keelson.access"]
    assert auth_access["attrs"]["client_ip"] == "127.0.0.1"  # the gateway's connection

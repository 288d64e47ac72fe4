"""Auth sees the real client behind the gateway, and only the gateway may say who that is.

Two auth replicas and the gateway run as real processes on one Redis. Replica `a` trusts
a proxy at 127.0.0.3 (the gateway's address, as in compose, where it is not loopback);
replica `b` trusts 127.0.0.1 (as `keelson up` sets it) and sits behind the real gateway.
Clients take distinct loopback source addresses, so each is a different peer.
"""

import asyncio
import random
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from keelson_dev.testing import ServiceProcess, gateway_process, migrated, removing_new_redis_keys

PASSWORD = "plum tractors sing quietly"
MAX_IP_FAILURES = 3
MAX_ACCOUNT_FAILURES = 5


@pytest.fixture(scope="module")
async def services(
    test_database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, ServiceProcess]]:
    await asyncio.to_thread(migrated, test_database_url, "auth_service")
    workdir = tmp_path_factory.mktemp("client-address")
    common = {
        "KEELSON_DATABASE_URL": test_database_url,
        "KEELSON_REDIS_URL": redis_url,
        "KEELSON_LOG__SHIP_ENDPOINT": "",
        "KEELSON_AUTH__PASSWORD__TIME_COST": "1",
        "KEELSON_AUTH__PASSWORD__MEMORY_COST": "1024",
        "KEELSON_AUTH__PASSWORD__PARALLELISM": "1",
        "KEELSON_AUTH__THROTTLE__MAX_IP_FAILURES": str(MAX_IP_FAILURES),
        "KEELSON_AUTH__THROTTLE__MAX_ACCOUNT_FAILURES": str(MAX_ACCOUNT_FAILURES),
        # Counters of their own: earlier tests' failed logins from 127.0.0.1 stay apart.
        "KEELSON_AUTH__THROTTLE__KEY_PREFIX": f"client-address-{uuid.uuid4().hex[:8]}:",
    }
    a = ServiceProcess(
        "auth_service", workdir, {**common, "KEELSON_TRUSTED_PROXIES": '["127.0.0.3"]'}
    )
    b = ServiceProcess(
        "auth_service", workdir, {**common, "KEELSON_TRUSTED_PROXIES": '["127.0.0.1/32"]'}
    )
    gateway = gateway_process(workdir, {"auth": b.url}, redis_url=redis_url)
    running = {"a": a, "b": b, "gateway": gateway}
    # The lockouts these tests cause (127.0.0.1's among them) must not outlive them.
    with removing_new_redis_keys(redis_url):
        try:
            for process in running.values():
                await process.wait_for("/health/ready")
            yield running
        finally:
            for process in running.values():
                process.stop()


def client_from(address: str, base_url: str) -> httpx.AsyncClient:
    """A client whose connections leave from `address` (any 127.0.0.0/8 address works)."""
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(transport=transport, base_url=base_url, timeout=10)


def some_ip() -> str:
    return f"198.18.{random.randrange(256)}.{random.randrange(1, 255)}"


def some_email() -> str:
    return f"nobody-{uuid.uuid4().hex[:12]}@example.com"


async def fail_login(
    client: httpx.AsyncClient, *, email: str | None = None, forwarded_for: str | None = None
) -> int:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    response = await client.post(
        "/api/v1/auth/login",
        json={"email": email or some_email(), "password": "not the password at all"},
        headers=headers,
    )
    return response.status_code


async def test_a_client_spoofing_x_forwarded_for_directly_is_not_believed(
    services: dict[str, ServiceProcess],
) -> None:
    # 127.0.0.1 is a loopback peer, yet not the configured proxy: its header is ignored, so
    # every attempt counts against its own address whatever address it claims.
    async with client_from("127.0.0.1", services["a"].url) as spoofer:
        codes = [await fail_login(spoofer, forwarded_for=some_ip()) for _ in range(4)]
    assert codes == [401] * (MAX_IP_FAILURES - 1) + [429] * (4 - MAX_IP_FAILURES + 1)


async def test_the_configured_proxy_is_believed_so_its_clients_are_throttled_apart(
    services: dict[str, ServiceProcess],
) -> None:
    first, second = some_ip(), some_ip()
    async with client_from("127.0.0.3", services["a"].url) as proxy:
        codes = [await fail_login(proxy, forwarded_for=first) for _ in range(MAX_IP_FAILURES)]
        assert codes[-1] == 429
        assert await fail_login(proxy, forwarded_for=first) == 429
        assert await fail_login(proxy, forwarded_for=second) == 401


async def test_two_clients_behind_the_gateway_are_throttled_separately(
    services: dict[str, ServiceProcess],
) -> None:
    gateway = services["gateway"].url
    async with client_from("127.0.0.4", gateway) as one, client_from("127.0.0.5", gateway) as two:
        codes = [await fail_login(one) for _ in range(MAX_IP_FAILURES + 1)]
        assert codes == [401] * (MAX_IP_FAILURES - 1) + [429, 429]
        assert await fail_login(two) == 401
        # A header the client sets is not taken for its address by the gateway either.
        assert await fail_login(one, forwarded_for=some_ip()) == 429


async def test_two_replicas_share_the_failure_counts_and_the_lockout(
    services: dict[str, ServiceProcess],
) -> None:
    email = some_email()
    async with (
        client_from("127.0.0.3", services["a"].url) as a,
        client_from("127.0.0.1", services["b"].url) as b,
    ):
        registered = await a.post(
            "/api/v1/auth/register", json={"email": email, "password": PASSWORD}
        )
        assert registered.status_code == 202, registered.text
        # Failures alternate between the replicas, each from a fresh address, so only the
        # account's count (kept in Redis) can reach the limit.
        codes = [
            await fail_login((a, b)[i % 2], email=email, forwarded_for=some_ip())
            for i in range(MAX_ACCOUNT_FAILURES)
        ]
        assert codes == [401] * (MAX_ACCOUNT_FAILURES - 1) + [429]
        for replica in (a, b):
            right = await replica.post(
                "/api/v1/auth/login",
                json={"email": email, "password": PASSWORD},
                headers={"X-Forwarded-For": some_ip()},
            )
            assert right.status_code == 429
            assert int(right.headers["retry-after"]) > 0


async def test_the_oauth_metadata_is_public_at_the_gateway(
    services: dict[str, ServiceProcess],
) -> None:
    async with httpx.AsyncClient(base_url=services["gateway"].url, timeout=10) as client:
        response = await client.get("/.well-known/oauth-authorization-server")
    assert response.status_code == 200, response.text
    assert response.json()["token_endpoint"].endswith("/api/v1/auth/token")

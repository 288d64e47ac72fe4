"""Failed-login limiting per account and per IP, the lockout and its expiry."""

from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from auth_service.app import create_app
from auth_service.settings import LoginThrottleSettings
from auth_service.throttle import LoginThrottle, MemoryCounters
from keelson.errors import TooManyRequests
from keelson_dev.testing import eventually

Register = Callable[..., Awaitable[dict[str, Any]]]


async def _attempt(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post("/api/v1/auth/login", json={"email": email, "password": password})


async def test_account_lockout_says_when_to_retry_and_expires(
    auth_settings_factory: Callable[..., Any], serve: Callable[..., Any], register: Register
) -> None:
    throttle = LoginThrottleSettings(
        max_account_failures=3, max_ip_failures=1000, window_seconds=60, lockout_seconds=1
    )
    async with serve(create_app(auth_settings_factory(throttle=throttle))) as client:
        user = await register(client)
        codes = [(await _attempt(client, user["email"], "wrong guess number")).status_code]
        codes.append((await _attempt(client, user["email"], "wrong guess number")).status_code)
        locking = await _attempt(client, user["email"], "wrong guess number")
        assert codes == [401, 401]
        assert locking.status_code == 429
        assert locking.headers["retry-after"] == "1"
        # While locked even the right password is refused, without being checked.
        locked = await _attempt(client, user["email"], user["password"])
        assert locked.status_code == 429
        assert int(locked.headers["retry-after"]) >= 1
        assert locked.headers["content-type"] == "application/problem+json"

        async def lockout_ended() -> bool:
            response = await _attempt(client, user["email"], user["password"])
            assert response.status_code in (200, 429)
            return response.status_code == 200

        await eventually(lockout_ended, interval=0.1)


async def test_unknown_emails_lock_exactly_like_real_ones(
    auth_settings_factory: Callable[..., Any],
    serve: Callable[..., Any],
    register: Register,
    new_email: Callable[..., str],
) -> None:
    throttle = LoginThrottleSettings(max_account_failures=2, max_ip_failures=1000)
    async with serve(create_app(auth_settings_factory(throttle=throttle))) as client:
        user = await register(client)
        real = [(await _attempt(client, user["email"], "wrong guess number")) for _ in range(3)]
        ghost_email = new_email()
        ghost = [(await _attempt(client, ghost_email, "wrong guess number")) for _ in range(3)]
        assert [r.status_code for r in real] == [r.status_code for r in ghost] == [401, 429, 429]
        assert real[-1].json()["detail"] == ghost[-1].json()["detail"]


async def test_per_ip_limit_spans_accounts_and_spares_other_clients(
    auth_settings_factory: Callable[..., Any],
    serve: Callable[..., Any],
    register: Register,
    new_email: Callable[..., str],
) -> None:
    settings = auth_settings_factory(
        throttle=LoginThrottleSettings(max_account_failures=100, max_ip_failures=4)
    )
    app = create_app(settings)
    async with serve(app, client_ip="203.0.113.9") as attacker:
        user = await register(attacker)
        codes = [
            (await _attempt(attacker, new_email(), "wrong guess number")).status_code
            for _ in range(4)
        ]
        assert codes == [401, 401, 401, 429]
        assert (await _attempt(attacker, user["email"], user["password"])).status_code == 429
        transport = httpx.ASGITransport(app=app, client=("203.0.113.10", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://auth.test") as other:
            assert (await _attempt(other, user["email"], user["password"])).status_code == 200


async def test_success_clears_the_account_failures() -> None:
    throttle = LoginThrottle(MemoryCounters(), LoginThrottleSettings(max_account_failures=2))
    await throttle.record_failure(email="a@example.com", ip="192.0.2.1")
    await throttle.record_success(email="a@example.com")
    await throttle.record_failure(email="a@example.com", ip="192.0.2.1")
    await throttle.check(email="a@example.com", ip="192.0.2.1")
    try:
        await throttle.record_failure(email="a@example.com", ip="192.0.2.1")
    except TooManyRequests as exc:
        assert exc.headers["Retry-After"] == "900"
    else:
        raise AssertionError("the second failure in a row should lock")

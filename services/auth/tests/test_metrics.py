"""Business events counted where they happen, read back from the service's own /metrics."""

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from auth_service.app import create_app
from auth_service.settings import LoginThrottleSettings

Register = Callable[..., Awaitable[dict[str, Any]]]


async def _events(client: httpx.AsyncClient) -> dict[tuple[str, str], float]:
    """business_events_total of the auth service by (event, outcome), as /metrics says."""
    text = (await client.get("/metrics")).text
    return {
        (sample.labels["event"], sample.labels["outcome"]): sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "business_events"
        for sample in family.samples
        if sample.name == "business_events_total" and sample.labels["service"] == "auth"
    }


def _delta(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]) -> dict:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


async def test_every_auth_event_is_exported_at_zero_before_it_happens(
    client: httpx.AsyncClient,
) -> None:
    events = await _events(client)
    assert set(events) >= {
        ("registration", "ok"),
        ("login", "success"),
        ("login", "failure"),
        ("login", "locked"),
        ("refresh", "success"),
        ("refresh", "failure"),
        ("refresh_reuse", "detected"),
    }


async def test_registration_login_refresh_and_reuse_are_counted(
    client: httpx.AsyncClient, register: Register
) -> None:
    before = await _events(client)
    user = await register(client)
    wrong = await client.post(
        "/api/v1/auth/login", json={"email": user["email"], "password": "not the password"}
    )
    assert wrong.status_code == 401
    first = await client.post(
        "/api/v1/auth/login", json={"email": user["email"], "password": user["password"]}
    )
    assert first.status_code == 200
    refresh = {"refresh_token": first.json()["refresh_token"]}
    second = await client.post("/api/v1/auth/refresh", json=refresh)
    assert second.status_code == 200
    # Once its successor is used, the first token coming back is reuse (within the grace
    # window, with the successor unused, it would get the same pair again).
    successor = {"refresh_token": second.json()["refresh_token"]}
    assert (await client.post("/api/v1/auth/refresh", json=successor)).status_code == 200
    assert (await client.post("/api/v1/auth/refresh", json=refresh)).status_code == 401  # reuse
    assert _delta(before, await _events(client)) == {
        ("registration", "ok"): 1,
        ("login", "failure"): 1,
        ("login", "success"): 1,
        ("refresh", "success"): 2,
        ("refresh", "failure"): 1,
        ("refresh_reuse", "detected"): 1,
    }


async def test_a_locked_login_is_counted_as_locked_not_failed(
    auth_settings_factory: Callable[..., Any], serve: Callable[..., Any], register: Register
) -> None:
    throttle = LoginThrottleSettings(
        max_account_failures=2, max_ip_failures=1000, window_seconds=60, lockout_seconds=60
    )
    async with serve(create_app(auth_settings_factory(throttle=throttle))) as client:
        user = await register(client)
        before = await _events(client)
        wrong = {"email": user["email"], "password": "wrong guess number"}
        codes = [(await client.post("/api/v1/auth/login", json=wrong)).status_code for _ in "abc"]
        assert codes == [401, 429, 429]
        assert _delta(before, await _events(client)) == {
            ("login", "failure"): 1,
            ("login", "locked"): 2,
        }

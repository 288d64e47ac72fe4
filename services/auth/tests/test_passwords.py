"""argon2id hashing, rehash on login when the cost changes, and the password policy."""

import os
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from auth_service.app import create_app
from auth_service.passwords import (
    HASHING_NICENESS,
    PasswordHashing,
    check_password_policy,
    common_passwords,
    default_concurrency,
)
from auth_service.settings import PasswordHashSettings
from keelson.errors import Unprocessable

Register = Callable[..., Awaitable[dict[str, Any]]]
Login = Callable[..., Awaitable[dict[str, Any]]]


async def _stored_hash(engine: AsyncEngine, email: str) -> str:
    async with engine.connect() as conn:
        value = await conn.scalar(
            text("SELECT password_hash FROM auth.users WHERE email = :e"), {"e": email}
        )
    assert isinstance(value, str)
    return value


async def test_login_rehashes_when_the_parameters_change(
    auth_settings_factory: Callable[..., Any],
    serve: Callable[..., Any],
    register: Register,
    login: Login,
    auth_engine: AsyncEngine,
) -> None:
    cheap = PasswordHashSettings(time_cost=1, memory_cost=1024, parallelism=1)
    dearer = PasswordHashSettings(time_cost=2, memory_cost=2048, parallelism=1)
    async with serve(create_app(auth_settings_factory(password=cheap))) as client:
        user = await register(client)
    first = await _stored_hash(auth_engine, user["email"])
    assert first.startswith("$argon2id$v=19$m=1024,t=1,p=1$")

    async with serve(create_app(auth_settings_factory(password=dearer))) as client:
        await login(client, user["email"])
        rehashed = await _stored_hash(auth_engine, user["email"])
        assert rehashed.startswith("$argon2id$v=19$m=2048,t=2,p=1$")
        await login(client, user["email"])
        assert await _stored_hash(auth_engine, user["email"]) == rehashed


async def test_hashing_round_trip_and_dummy() -> None:
    hashing = PasswordHashing(PasswordHashSettings(time_cost=1, memory_cost=1024, parallelism=1))
    digest = await hashing.hash("a long enough phrase")
    assert await hashing.verify(digest, "a long enough phrase")
    assert not await hashing.verify(digest, "another phrase entirely")
    assert not await hashing.verify("not-a-hash", "a long enough phrase")
    assert not await hashing.verify_dummy("a long enough phrase")
    assert not hashing.needs_rehash(digest)


def test_the_common_list_ships_with_the_package() -> None:
    words = common_passwords()
    assert len(words) > 3000
    assert {"123456", "password", "qwertyuiop", "iloveyou", "password123"} <= words


@pytest.mark.parametrize(
    "password",
    ["Password123!", "QWERTY123456789", "iloveyou2024", "letmein12345", "Welcome2024!"],
)
def test_common_passwords_fail_whatever_their_case(password: str) -> None:
    with pytest.raises(Unprocessable) as refused:
        check_password_policy(password, email="x@example.com", min_length=8)
    assert refused.value.extensions["rule"] == "common"


def test_length_limits() -> None:
    check_password_policy("nine words", email="x@example.com", min_length=10)
    for password, rule in (("x" * 9 + "y", "repetitive"), ("w" * 1025, "too_long")):
        with pytest.raises(Unprocessable) as refused:
            check_password_policy(password, email="x@example.com", min_length=10)
        assert refused.value.extensions["rule"] == rule


async def test_the_default_cost_is_owasps_argon2id_recommendation() -> None:
    hashing = PasswordHashing(PasswordHashSettings())
    assert (await hashing.hash("violet kettles hum at dawn")).startswith(
        "$argon2id$v=19$m=19456,t=2,p=1$"
    )


@pytest.mark.skipif(sys.platform != "linux", reason="a per-thread nice value is Linux's")
async def test_hashing_threads_are_nicer_than_the_event_loop_and_one_core_is_left() -> None:
    """The event loop keeps a core (slots: cores - 1, at least one) and wins the CPU from
    the hashing threads whenever both could run (their nice value is HASHING_NICENESS up)."""
    cores = os.cpu_count() or 1
    hashing = PasswordHashing(PasswordHashSettings(time_cost=1, memory_cost=1024))
    assert hashing.concurrency == default_concurrency() == max(1, cores - 1)
    try:
        digest = await hashing.hash("violet kettles hum at dawn")
        assert await hashing.verify(digest, "violet kettles hum at dawn")
        workers = [t for t in threading.enumerate() if t.name.startswith("argon2id")]
        assert workers and all(t.native_id is not None for t in workers)
        mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        for worker in workers:
            assert worker.native_id is not None
            nice = os.getpriority(os.PRIO_PROCESS, worker.native_id)
            assert nice == min(19, mine + HASHING_NICENESS), (worker.name, nice, mine)
    finally:
        hashing.close()


async def test_hashing_runs_at_most_concurrency_at_once_and_refuses_beyond_the_queue() -> None:
    import asyncio

    from keelson.errors import ServiceUnavailable

    hashing = PasswordHashing(
        PasswordHashSettings(time_cost=1, memory_cost=1024, parallelism=1, concurrency=1)
    )
    assert hashing.max_waiting == 4  # four waiting per slot unless configured
    bounded = PasswordHashing(
        PasswordHashSettings(
            time_cost=1, memory_cost=1024, parallelism=1, concurrency=1, max_waiting=1
        )
    )
    # Started together: one runs, one waits for its slot, the third is refused at once.
    results = await asyncio.gather(
        *(bounded.hash(f"pass phrase number {i}") for i in range(3)), return_exceptions=True
    )
    assert [type(r).__name__ for r in results] == ["str", "str", "ServiceUnavailable"]
    refused = results[2]
    assert isinstance(refused, ServiceUnavailable)
    assert refused.status == 503 and refused.headers["Retry-After"] == "1"
    # Once the burst is over, the slot serves again.
    assert await bounded.verify(str(results[0]), "pass phrase number 0")


async def test_a_login_refused_for_busy_hashing_is_503_with_retry_after(
    auth_settings_factory: Callable[..., Any],
    serve: Callable[..., Any],
    register: Register,
) -> None:
    import asyncio

    cost = PasswordHashSettings(
        time_cost=1, memory_cost=1024, parallelism=1, concurrency=1, max_waiting=0
    )
    async with serve(create_app(auth_settings_factory(password=cost))) as client:
        user = await register(client)
        body = {"email": user["email"], "password": user["password"]}
        responses = await asyncio.gather(
            *(client.post("/api/v1/auth/login", json=body) for _ in range(6))
        )
    codes = {response.status_code for response in responses}
    assert codes <= {200, 503} and 200 in codes
    for response in responses:
        if response.status_code == 503:
            assert response.headers["retry-after"] == "1"
            assert response.headers["content-type"] == "application/problem+json"

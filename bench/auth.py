"""Token verifications and logins per second: keelson.auth beside raw python-jose.

    .venv/bin/python bench/auth.py --database-url postgresql://postgres@127.0.0.1:5432/postgres \
        --redis-url redis://127.0.0.1:6379/4

Everything runs in one process and one event loop (one core for the verification loops):

- raw python-jose: `jwt.decode` of an ES256 token with the key object built once, pinned
  algorithm, `iss` and `aud` checked: the floor any verifier on python-jose pays;
- keelson.auth: `TokenVerifier.verify` with the keys in memory (header and `kid` checks,
  decode, claim requirements, `Principal`), no revocation check;
- keelson.auth, deployed: the same with the keys from the auth service's JWKS (fetched over
  HTTP once, from the real auth app) and the revoked-`jti` check in Redis (one EXISTS per
  token), as the gateway and every service run it;
- logins: `POST /api/v1/auth/login` against the real auth app (Postgres, Redis, outbox)
  with the default argon2id cost (OWASP's m=19 MiB, t=2, p=1), one at a time and with
  4 in flight, per wall-clock second and per CPU-second of the process (argon2's worker
  threads included: logins per core), beside the bare argon2 verify rate at that cost;
- `/me` while logins saturate: 8 clients log in back to back (more than the hashing
  slots, so some are answered 503 and come back after Retry-After) while one client
  reads `GET /api/v1/auth/me`; its latencies' p50 and p99.

A temporary database is created and dropped. Results are printed and written to the "Auth"
section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shlex
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from _docs import write_section
from jose import jwk, jwt
from redis.asyncio import Redis

from auth_service.app import create_app
from auth_service.passwords import password_hasher
from auth_service.plugin import KEYRING
from auth_service.settings import (
    AuthSettings,
    LoginThrottleSettings,
    PasswordHashSettings,
    Settings,
)
from keelson.auth import JwksClient, RevocationList, StaticKeys, TokenVerifier
from keelson.config import Environment, LogSettings
from keelson.db import migrate
from keelson.keys import SigningKey
from keelson_dev.testing import fresh_database

MIGRATIONS = Path(__file__).resolve().parent.parent / "services/auth/auth_service/migrations"
PASSWORD = "bench pass phrase for logins"


def claims() -> dict[str, object]:
    now = int(time.time())
    return {
        "iss": "keelson-auth",
        "aud": "keelson",
        "sub": str(uuid.uuid4()),
        "roles": ["user"],
        "scope": "profile:read profile:write",
        "sid": str(uuid.uuid4()),
        "jti": uuid.uuid4().hex,
        "iat": now,
        "nbf": now,
        "exp": now + 900,
    }


Rate = tuple[float, float]  # per wall-clock second, per CPU-second of this process


async def rate(n: int, step: Callable[[int], Awaitable[object]]) -> Rate:
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        await step(i)
    return n / (time.perf_counter() - wall), n / (time.process_time() - cpu)


async def verification_rates(
    n: int, redis: Redis, auth: httpx.AsyncClient, sign_as_auth: Callable[[dict[str, object]], str]
) -> dict[str, Rate]:
    key = SigningKey.generate()
    signer = jwk.construct(key.private_pem, "ES256")
    tokens = [
        jwt.encode(claims(), signer, algorithm="ES256", headers={"kid": key.kid})
        for _ in range(1000)
    ]
    public = jwk.construct(key.public_jwk(), "ES256")
    # The deployed verifier knows the auth app's keys only, so its tokens come from there.
    auth_tokens = [sign_as_auth(claims()) for _ in range(1000)]

    async def raw(i: int) -> object:
        return jwt.decode(
            tokens[i % 1000],
            public,
            algorithms=["ES256"],
            audience="keelson",
            issuer="keelson-auth",
        )

    in_memory = TokenVerifier(StaticKeys([key.public_jwk()]))
    deployed = TokenVerifier(
        JwksClient(auth, "http://auth.bench/.well-known/jwks.json"),
        revocations=RevocationList(redis),
    )
    steps: dict[str, Callable[[int], Awaitable[object]]] = {
        "raw python-jose `jwt.decode`": raw,
        "keelson.auth `TokenVerifier`, keys in memory": lambda i: in_memory.verify(
            tokens[i % 1000]
        ),
        "keelson.auth `TokenVerifier`, JWKS + Redis revocation check": lambda i: deployed.verify(
            auth_tokens[i % 1000]
        ),
    }
    results = {}
    for name, step in steps.items():
        await step(0)  # warm up (and, for the deployed one, fetch the JWKS)
        results[name] = await rate(n, step)
    return results


async def login_rates(client: httpx.AsyncClient, n: int) -> dict[str, Rate]:
    email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
    body = {"email": email, "password": PASSWORD}
    (await client.post("/api/v1/auth/register", json=body)).raise_for_status()

    async def login(_: int) -> object:
        response = await client.post("/api/v1/auth/login", json=body)
        response.raise_for_status()
        return response

    await login(0)
    sequential = await rate(n, login)
    in_flight = 4
    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(rate(n // in_flight, login) for _ in range(in_flight)))
    done = n // in_flight * in_flight
    concurrent = (done / (time.perf_counter() - wall), done / (time.process_time() - cpu))
    return {"one at a time": sequential, f"{in_flight} in flight": concurrent}


async def me_while_logins_saturate(client: httpx.AsyncClient, n: int) -> dict[str, float]:
    """p50/p99 of `/me` (ms) while 8 clients log in back to back; logins done and refused."""
    email = f"bench-me-{uuid.uuid4().hex[:8]}@example.com"
    body = {"email": email, "password": PASSWORD}
    (await client.post("/api/v1/auth/register", json=body)).raise_for_status()
    tokens = (await client.post("/api/v1/auth/login", json=body)).json()
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    stop = asyncio.Event()
    outcomes = {"logins": 0, "refused (503)": 0}

    async def log_in_until_stopped() -> None:
        while not stop.is_set():
            response = await client.post("/api/v1/auth/login", json=body)
            if response.status_code == 200:
                outcomes["logins"] += 1
                continue
            outcomes["refused (503)"] += 1
            # As a client should: come back after Retry-After, not at once.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), int(response.headers["retry-after"]))

    loaders = [asyncio.create_task(log_in_until_stopped()) for _ in range(8)]
    latencies = []
    try:
        for _ in range(n):
            started = time.perf_counter()
            (await client.get("/api/v1/auth/me", headers=bearer)).raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)
    finally:
        stop.set()
        await asyncio.gather(*loaders)
    latencies.sort()
    return {
        "p50": latencies[len(latencies) // 2],
        "p99": latencies[int(len(latencies) * 0.99) - 1],
        **{k: float(v) for k, v in outcomes.items()},
    }


def argon2_rate(settings: PasswordHashSettings, n: int) -> float:
    hasher = password_hasher(settings)
    digest = hasher.hash(PASSWORD)
    started = time.perf_counter()
    for _ in range(n):
        hasher.verify(digest, PASSWORD)
    return n / (time.perf_counter() - started)


async def bench(args: argparse.Namespace, database_url: str) -> str:
    await asyncio.to_thread(migrate, MIGRATIONS, database_url)
    cost = PasswordHashSettings(concurrency=args.hashing_slots)
    settings = Settings(
        env=Environment.TEST,
        database_url=database_url,
        redis_url=args.redis_url,
        log=LogSettings(ship_endpoint=None),
        auth=AuthSettings(password=cost, throttle=LoginThrottleSettings(max_ip_failures=10**6)),
    )
    app = create_app(settings)
    redis = Redis.from_url(args.redis_url)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://auth.bench") as auth:
                sign_as_auth = app.state.container.resolve(KEYRING).sign
                verifications = await verification_rates(
                    args.verifications, redis, auth, sign_as_auth
                )
                logins = await login_rates(auth, args.logins)
                me = await me_while_logins_saturate(auth, args.me_requests)
    finally:
        await redis.aclose()
    hashing = await asyncio.to_thread(argon2_rate, cost, args.logins)
    return table(verifications, logins, hashing, cost, me)


def table(
    verifications: dict[str, Rate],
    logins: dict[str, Rate],
    hashing: float,
    cost: PasswordHashSettings,
    me: dict[str, float],
) -> str:
    _, raw_cpu = next(iter(verifications.values()))
    lines = [
        "| verification | tokens/s | tokens per CPU-second | vs raw (CPU) |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {name} | {wall:,.0f} | {cpu:,.0f} | {cpu / raw_cpu:.0%} |"
        for name, (wall, cpu) in verifications.items()
    ]
    argon = f"argon2id t={cost.time_cost}, m={cost.memory_cost // 1024} MiB, p={cost.parallelism}"
    lines += [
        "",
        f"| login ({argon}) | logins/s | logins per CPU-second |",
        "| --- | ---: | ---: |",
    ]
    lines += [
        f"| `POST /login`, {name} | {wall:,.1f} | {cpu:,.1f} |"
        for name, (wall, cpu) in logins.items()
    ]
    lines.append(f"| bare argon2 verify | {hashing:,.1f} | |")
    per_core = max(cpu for _, cpu in logins.values())
    lines += [
        "",
        f"Logins per core at the default cost: **{per_core:,.1f} per CPU-second** (goal >= 30)."
        f" `GET /me` while 8 clients log in back to back: p50 {me['p50']:.1f} ms,"
        f" **p99 {me['p99']:.1f} ms** (goal <= 50 ms); meanwhile {me['logins']:,.0f} logins"
        f" and {me['refused (503)']:,.0f} answered 503 (every hashing slot busy).",
    ]
    in_memory_wall, in_memory_cpu = list(verifications.values())[1]
    lines += [
        "",
        f"keelson.auth verifications with keys in memory: **{in_memory_cpu:,.0f} per CPU-second**"
        f" ({in_memory_wall:,.0f}/s wall-clock on the shared machine; goal >= 5,000/s on one"
        f" core). Load average at the end of the run: {os.getloadavg()[0]:.1f}.",
    ]
    return "\n".join(lines)


def write_docs(body: str, command: str) -> None:
    section = "\n".join(
        [
            "ES256 access-token verification through `keelson.auth` beside raw python-jose, "
            "and logins at the default argon2id cost through the real auth app (one process; "
            "see the docstring of `bench/auth.py`).",
            "",
            f"Command: `{command}`",
            "",
            f"{platform.python_implementation()} {platform.python_version()}, "
            f"{os.cpu_count()} CPUs shared with other work, so figures are noisy. "
            f"Recorded {time.strftime('%Y-%m-%d %H:%M')}.",
            "",
            body,
        ]
    )
    write_section("Auth", section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "KEELSON_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("KEELSON_TEST_REDIS_URL", "redis://127.0.0.1:6379/4")
    )
    parser.add_argument("--verifications", type=int, default=20_000)
    parser.add_argument("--logins", type=int, default=200)
    parser.add_argument("--me-requests", type=int, default=500)
    parser.add_argument(
        "--hashing-slots", type=int, default=None, help="argon2 runs at once (default: cores)"
    )
    parser.add_argument("--no-docs", action="store_true", help="print only")
    args = parser.parse_args()
    with fresh_database(args.database_url, prefix="keelson_bench") as url:
        body = asyncio.run(bench(args, url))
    print(body)
    if not args.no_docs:
        command = ".venv/bin/python bench/auth.py " + shlex.join(sys.argv[1:])
        write_docs(body, command.strip())


if __name__ == "__main__":
    main()

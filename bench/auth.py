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
- the anchor: bare argon2-cffi verifies at each of OWASP's equal-cost argon2id parameter
  sets (m=46 MiB t=1, m=19 MiB t=2 (the default), m=12 MiB t=3, m=9 MiB t=4, m=7 MiB t=5;
  p=1), per CPU-second of the one thread running them: what a core can do at most;
- logins: `POST /api/v1/auth/login` against the real auth app (Postgres, Redis, outbox)
  at the default cost, one at a time and with 4 in flight, per wall-clock second and per
  CPU-second of the process (argon2's worker threads and the in-process client included:
  logins per core);
- `/me` alone, then while logins saturate: 8 clients log in back to back (more than the
  hashing slots, so some may be answered 503 and come back after Retry-After) while one
  client reads `GET /api/v1/auth/me`; its latencies' p50 and p99, with the default hashing
  slots (cores - 1) and with one per core, taking turns `--repeats` times.

A temporary database is created and dropped. Results are printed and written to the "Auth"
section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from _suite import arguments, record, run
from fastapi import FastAPI
from jose import jwk, jwt
from redis.asyncio import Redis

from auth_service.app import create_app
from auth_service.passwords import default_concurrency, password_hasher
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
        if response.status_code != 200:
            raise SystemExit(f"login answered {response.status_code}: {response.text}")
        return response

    await login(0)
    sequential = await rate(n, login)
    in_flight = 4
    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(rate(n // in_flight, login) for _ in range(in_flight)))
    done = n // in_flight * in_flight
    concurrent = (done / (time.perf_counter() - wall), done / (time.process_time() - cpu))
    return {"one at a time": sequential, f"{in_flight} in flight": concurrent}


async def me_latencies(client: httpx.AsyncClient, bearer: dict[str, str], n: int) -> list[float]:
    latencies = []
    for _ in range(n):
        started = time.perf_counter()
        (await client.get("/api/v1/auth/me", headers=bearer)).raise_for_status()
        latencies.append((time.perf_counter() - started) * 1000)
    return sorted(latencies)


def quantile(latencies: list[float], q: float) -> float:
    return latencies[max(0, int(len(latencies) * q) - 1)]


async def me_idle_and_while_logins_saturate(client: httpx.AsyncClient, n: int) -> dict[str, float]:
    """p50/p99 of `/me` (ms) alone, then while 8 clients log in back to back; logins done
    and refused meanwhile."""
    email = f"bench-me-{uuid.uuid4().hex[:8]}@example.com"
    body = {"email": email, "password": PASSWORD}
    (await client.post("/api/v1/auth/register", json=body)).raise_for_status()
    tokens = (await client.post("/api/v1/auth/login", json=body)).json()
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    idle = await me_latencies(client, bearer, n)
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
    try:
        busy = await me_latencies(client, bearer, n)
    finally:
        stop.set()
        await asyncio.gather(*loaders)
    return {
        "idle p50": quantile(idle, 0.5),
        "idle p99": quantile(idle, 0.99),
        "p50": quantile(busy, 0.5),
        "p99": quantile(busy, 0.99),
        **{k: float(v) for k, v in outcomes.items()},
    }


# OWASP's argon2id list (Password Storage Cheat Sheet): equal cost by their reckoning.
OWASP_ARGON2ID = ((47_104, 1), (19_456, 2), (12_288, 3), (9_216, 4), (7_168, 5))


def argon2_anchor(n: int, repeats: int) -> dict[tuple[int, int], Rate]:
    """Bare argon2-cffi verifies at each of OWASP's parameter sets (p=1), in one thread:
    per wall-clock second and per CPU-second of that thread; the sets take turns, and
    each figure is the median of `repeats` rounds."""
    rounds: dict[tuple[int, int], list[Rate]] = {cost: [] for cost in OWASP_ARGON2ID}
    for _ in range(repeats):
        for memory, time_cost in OWASP_ARGON2ID:
            settings = PasswordHashSettings(memory_cost=memory, time_cost=time_cost)
            hasher = password_hasher(settings)
            digest = hasher.hash(PASSWORD)
            hasher.verify(digest, PASSWORD)
            wall, cpu = time.perf_counter(), time.thread_time()
            for _ in range(n):
                hasher.verify(digest, PASSWORD)
            rounds[(memory, time_cost)].append(
                (n / (time.perf_counter() - wall), n / (time.thread_time() - cpu))
            )
    return {
        cost: (statistics.median(w for w, _ in r), statistics.median(c for _, c in r))
        for cost, r in rounds.items()
    }


def auth_app(args: argparse.Namespace, database_url: str, slots: int | None) -> FastAPI:
    settings = Settings(
        env=Environment.TEST,
        database_url=database_url,
        redis_url=args.redis_url,
        log=LogSettings(ship_endpoint=None),
        auth=AuthSettings(
            password=PasswordHashSettings(concurrency=slots),
            throttle=LoginThrottleSettings(max_ip_failures=10**6),
        ),
    )
    return create_app(settings)


async def bench(args: argparse.Namespace, database_url: str) -> str:
    await asyncio.to_thread(migrate, MIGRATIONS, database_url)
    anchor = await asyncio.to_thread(argon2_anchor, args.anchor_verifies, args.repeats)
    redis = Redis.from_url(args.redis_url)
    cores = os.cpu_count() or 1
    # The default slots (cores - 1), then one per core, taking turns `repeats` times.
    configs = [(f"{default_concurrency()} (default)", None), (f"{cores} (one per core)", cores)]
    me: dict[str, list[dict[str, float]]] = {name: [] for name, _ in configs}
    verifications: dict[str, Rate] = {}
    logins: dict[str, Rate] = {}
    try:
        for round_ in range(args.repeats):
            for name, slots in configs:
                app = auth_app(args, database_url, slots)
                async with app.router.lifespan_context(app):
                    transport = httpx.ASGITransport(app=app)
                    async with httpx.AsyncClient(
                        transport=transport, base_url="http://auth.bench"
                    ) as auth:
                        if round_ == 0 and slots is None:
                            sign_as_auth = app.state.container.resolve(KEYRING).sign
                            verifications = await verification_rates(
                                args.verifications, redis, auth, sign_as_auth
                            )
                            logins = await login_rates(auth, args.logins)
                        me[name].append(
                            await me_idle_and_while_logins_saturate(auth, args.me_requests)
                        )
    finally:
        await redis.aclose()
    return table(verifications, logins, anchor, PasswordHashSettings(), me)


def table(
    verifications: dict[str, Rate],
    logins: dict[str, Rate],
    anchor: dict[tuple[int, int], Rate],
    cost: PasswordHashSettings,
    me: dict[str, list[dict[str, float]]],
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
    lines += [
        "",
        "| bare argon2-cffi verify (OWASP's list, p=1) | verifies/s | per CPU-second |",
        "| --- | ---: | ---: |",
    ]
    for (memory, time_cost), (wall, cpu) in anchor.items():
        default = (memory, time_cost) == (cost.memory_cost, cost.time_cost)
        label = f"m={memory // 1024} MiB, t={time_cost}" + (" (default)" if default else "")
        lines.append(f"| {label} | {wall:,.1f} | {cpu:,.1f} |")
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
    per_core = max(cpu for _, cpu in logins.values())
    _, hash_cpu = anchor[(cost.memory_cost, cost.time_cost)]
    lines += [
        "",
        f"Logins per core at the default cost: **{per_core:,.1f} per CPU-second** (goal >= 30),"
        f" {per_core / hash_cpu:.0%} of the bare argon2 verify rate per CPU-second at that"
        f" cost ({hash_cpu:,.1f}), the anchor: the hash alone allows at most that.",
        "",
        "| hashing slots | round | `/me` alone p50 / p99 | `/me` while 8 clients log in: p50 / p99"
        " | p99 ratio to alone | logins meanwhile | answered 503 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, rounds in me.items():
        for i, m in enumerate(rounds, 1):
            lines.append(
                f"| {name} | {i} | {m['idle p50']:.1f} / {m['idle p99']:.1f} ms"
                f" | {m['p50']:.1f} / **{m['p99']:.1f}** ms | {m['p99'] / m['idle p99']:.1f}x"
                f" | {m['logins']:,.0f} | {m['refused (503)']:,.0f} |"
            )
    default_name, per_core_name = list(me)
    default_p99 = statistics.median(m["p99"] for m in me[default_name])
    per_core_p99 = statistics.median(m["p99"] for m in me[per_core_name])
    idle_p99 = statistics.median(m["idle p99"] for m in me[default_name])
    cheapest, (_, cheapest_cpu) = max(anchor.items(), key=lambda item: item[1][1])
    lines += [
        "",
        f"`/me` p99 while logins saturate, median of the rounds: **{default_p99:.1f} ms** with"
        f" the default hashing slots, {per_core_p99:.1f} ms with one per core"
        f" ({per_core_p99 / default_p99:.1f}x the default's; goal <= 50 ms); alone it is"
        f" {idle_p99:.1f} ms on this machine, so saturating logins multiply it by"
        f" {default_p99 / idle_p99:.1f}. OWASP's cheapest set here per CPU-second is"
        f" m={cheapest[0] // 1024} MiB, t={cheapest[1]} ({cheapest_cpu:,.1f},"
        f" {cheapest_cpu / hash_cpu - 1:+.0%} on the default's).",
    ]
    in_memory_wall, in_memory_cpu = list(verifications.values())[1]
    lines += [
        "",
        f"keelson.auth verifications with keys in memory: **{in_memory_cpu:,.0f} per CPU-second**"
        f" ({in_memory_wall:,.0f}/s wall-clock on the shared machine; goal >= 5,000/s on one"
        f" core). Load average at the end of the run: {os.getloadavg()[0]:.1f}.",
    ]
    return "\n".join(lines)


INTRO = (
    "ES256 access-token verification through `keelson.auth` beside raw python-jose, "
    "and logins at the default argon2id cost through the real auth app (one process; "
    "see the docstring of `bench/auth.py`)."
)
NOTE = (
    "Read the `/me` rows as ratios: the machine is shared with other work (the load"
    " average above), so `/me` alone already has a p99 far above an idle machine's."
    " With the default hashing slots (cores - 1, at least one) the event loop keeps a"
    " core while logins saturate the others; with one slot per core it competes with"
    " the hashing threads for every core. Either way the hashing threads run nicer"
    " than the event loop (Linux's per-thread nice value, +10), so it wins the CPU"
    " from them whenever both could run; on this shared machine they also lose it to"
    " every other process, so fewer logins complete meanwhile (that column) than on"
    " a machine or container of their own. On two cores the default halves a process's"
    " hashing throughput: logins beyond its slot and queue are answered 503 with"
    " Retry-After (the last column) instead of waiting without limit; more capacity"
    " is more auth replicas. The anchor says the hash is not what bounds logins per"
    " core at the default cost: the rest of a login (Postgres, Redis, the session, the"
    " tokens, the outbox, and the in-process client here) costs about half as much"
    " again, and the goal is met at OWASP's first set, which stays the default"
    " (m=19 MiB, t=2, p=1)."
)


def main() -> None:
    parser = arguments(__doc__ or "", redis_db=4)
    parser.add_argument("--verifications", type=int, default=20_000)
    parser.add_argument("--logins", type=int, default=200)
    parser.add_argument("--me-requests", type=int, default=500)
    parser.add_argument("--anchor-verifies", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2, help="rounds of the anchor and /me")
    args = parser.parse_args()
    body = run(args, bench)
    if not args.no_docs:
        record("Auth", INTRO, body, notes=[NOTE])


if __name__ == "__main__":
    main()

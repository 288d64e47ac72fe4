"""Signed webhooks per second through the payments service, beside the bare loop; intents/s.

    .venv/bin/python bench/payments.py \
        --database-url postgresql://postgres@127.0.0.1:5432/postgres \
        --redis-url redis://127.0.0.1:6379/12

- webhooks: the real payments app (sandbox mode, Redis bus, outbox relay running) driven
  in-process over ASGI, one process and one event loop: `POST /api/v1/payments/webhooks/stripe`
  with a `payment_intent.succeeded` event signed with Stripe's scheme, each for an intent
  of its own, so every event is verified (`stripe.Webhook.construct_event`), de-duplicated,
  moves a state, writes a ledger row and an outbox row, in one transaction; one at a time
  and with 8 in flight;
- bare loop: `stripe.Webhook.construct_event` and one INSERT (asyncpg, autocommit) per
  event, one at a time, in the same run: the floor of any webhook endpoint. The two
  alternate in rounds (best of each is shown), so that both meet the same machine load;
- intents: `POST /api/v1/payments/intents` through the gateway (`python -m gateway`, JWT
  verified, rate limited, proxied) to `python -m payments_service` with the sandbox
  provider, 8 in flight, each with its own Idempotency-Key.

A temporary database is created and dropped. Results are printed and written to the
"Payments" section of docs/benchmarks.md (`--no-docs` to skip that).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import platform
import shlex
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import httpx
import stripe
from _docs import write_section
from sqlalchemy import event as sa_event
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from keelson.config import Environment, LogSettings
from keelson.db import DB_ENGINE, create_engine, migrate
from keelson.payment import PaymentSettings
from keelson_dev.embedded import free_port
from keelson_dev.testing import ServiceProcess, fresh_database
from payments_service.app import create_app
from payments_service.settings import PaymentsSettings, Settings

ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec_sandbox_keelson_bench"
PASSWORD = "bench pass phrase for payments"


def signed(payload: bytes) -> str:
    now = int(time.time())
    mac = hmac.new(SECRET.encode(), f"{now}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={now},v1={mac}"


def succeeded_event(provider_id: str) -> bytes:
    return json.dumps(
        {
            "id": f"evt_{uuid.uuid4().hex[:24]}",
            "object": "event",
            "type": "payment_intent.succeeded",
            "created": int(time.time()),
            "livemode": False,
            "data": {
                "object": {
                    "id": provider_id,
                    "object": "payment_intent",
                    "status": "succeeded",
                    "amount": 1000,
                    "amount_received": 1000,
                    "currency": "usd",
                }
            },
        }
    ).encode()


async def seed_intents(settings: Settings, n: int) -> list[str]:
    """`n` open intents, inserted directly (the webhook path is what is measured)."""
    engine = create_engine(settings, schema="payments")
    ids = [f"pi_bench_{uuid.uuid4().hex[:20]}" for _ in range(n)]
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO payments.intents (id, user_id, provider, provider_id, amount,"
                " currency, metadata, status, amount_received, amount_refunded, livemode,"
                " idempotency_key, request_hash) SELECT gen_random_uuid(), 'bench', 'sandbox',"
                " p, 1000, 'usd', '{}', 'requires_payment_method', 0, 0, false, p, ''"
                " FROM unnest(CAST(:ids AS text[])) AS p"
            ),
            {"ids": ids},
        )
    await engine.dispose()
    return ids


Rate = tuple[float, float]  # events per wall-clock second, per CPU-second of this process


async def timed(n: int, in_flight: int, step: Callable[[int], Awaitable[None]]) -> Rate:
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            await step(i)

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return n / (time.perf_counter() - wall), n / (time.process_time() - cpu)


def best(rates: list[Rate]) -> Rate:
    return max(r[0] for r in rates), max(r[1] for r in rates)


class Statements:
    """Counts the statements the service's engine sends (one round trip each)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.count = 0
        self.engine = engine
        sa_event.listen(engine.sync_engine, "before_cursor_execute", self._seen)

    def _seen(self, *args: object) -> None:
        self.count += 1

    def close(self) -> None:
        sa_event.remove(self.engine.sync_engine, "before_cursor_execute", self._seen)


async def webhook_rates(
    settings: Settings, database_url: str, n: int, rounds: int
) -> dict[str, Rate]:
    """The service and the bare loop in alternating rounds, so both meet the same load."""
    app = create_app(settings)
    results: dict[str, list[Rate]] = {}
    per_round = n // rounds
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://payments.bench") as c:

            async def service(in_flight: int) -> Rate:
                payloads = [succeeded_event(p) for p in await seed_intents(settings, per_round)]

                async def post(i: int) -> None:
                    body = payloads[i]
                    response = await c.post(
                        "/api/v1/payments/webhooks/stripe",
                        content=body,
                        headers={"Stripe-Signature": signed(body)},
                    )
                    assert response.json()["outcome"] == "applied", response.text

                return await timed(per_round, in_flight, post)

            statements = Statements(app.state.container.resolve(DB_ENGINE))
            await service(1)  # warm up, and count the statements of each event
            per_event = statements.count / per_round
            statements.close()
            for _ in range(rounds):
                results.setdefault("bare", []).append(await bare_rate(database_url, per_round))
                for in_flight in (1, 8):
                    name = f"payments service, {in_flight} in flight"
                    results.setdefault(name, []).append(await service(in_flight))
    rates = {name: best(found) for name, found in results.items()}
    rates["statements"] = (per_event, per_event)
    return rates


async def bare_rate(database_url: str, n: int) -> Rate:
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    conn = await asyncpg.connect(dsn)
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS bench_webhooks (id text PRIMARY KEY, body jsonb)"
    )
    payloads = [succeeded_event(f"pi_{uuid.uuid4().hex}") for _ in range(n)]

    async def step(i: int) -> None:
        body = payloads[i]
        parsed = stripe.Webhook.construct_event(body, signed(body), SECRET)
        await conn.execute(
            "INSERT INTO bench_webhooks VALUES ($1, $2)", parsed["id"], body.decode()
        )

    try:
        return await timed(n, 1, step)
    finally:
        await conn.close()


async def intent_rate(database_url: str, redis_url: str, n: int) -> float:
    workdir = Path(tempfile.mkdtemp(prefix="keelson-bench-payments-"))
    common = {
        "KEELSON_REDIS_URL": redis_url,
        "KEELSON_LOG__SHIP_ENDPOINT": "",
        "KEELSON_ACCESS_LOG": "false",
    }
    auth = ServiceProcess(
        "auth_service",
        workdir,
        {
            **common,
            "KEELSON_DATABASE_URL": database_url,
            "KEELSON_AUTH__PASSWORD__TIME_COST": "1",
            "KEELSON_AUTH__PASSWORD__MEMORY_COST": "1024",
            "KEELSON_AUTH__PASSWORD__PARALLELISM": "1",
        },
    )
    payments = ServiceProcess(
        "payments_service",
        workdir,
        {
            **common,
            "KEELSON_DATABASE_URL": database_url,
            "KEELSON_PLUGINS": json.dumps(
                {"auth": {"jwks_url": f"{auth.url}/.well-known/jwks.json"}}
            ),
        },
    )
    dead = f"http://127.0.0.1:{free_port()}"
    upstreams = {"auth": auth.url, "payments": payments.url, "logs": dead, "notifications": dead}
    gateway = ServiceProcess(
        "gateway",
        workdir,
        {
            **common,
            "KEELSON_PLUGINS": json.dumps(
                {
                    "routing": {"upstreams": {k: {"url": u} for k, u in upstreams.items()}},
                    "rate_limiting": {"enabled": False},
                }
            ),
        },
    )
    processes = [auth, payments, gateway]
    try:
        for process in processes:
            await process.wait_for("/health/live")
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            body = {"email": f"bench-{uuid.uuid4().hex[:8]}@example.com", "password": PASSWORD}
            (await client.post("/api/v1/auth/register", json=body)).raise_for_status()
            login = await client.post("/api/v1/auth/login", json=body)
            login.raise_for_status()
            headers = {"Authorization": f"Bearer {login.json()['access_token']}"}

            async def create(_: int) -> None:
                response = await client.post(
                    "/api/v1/payments/intents",
                    json={"amount": 1999, "currency": "usd"},
                    headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
                )
                assert response.status_code == 201, response.text

            await timed(20, 4, create)  # warm up
            wall, _ = await timed(n, 8, create)
            return wall
    finally:
        for process in processes:
            process.stop()


async def bench(args: argparse.Namespace, database_url: str) -> str:
    for service, package in (("auth", "auth_service"), ("payments", "payments_service")):
        await asyncio.to_thread(
            migrate, ROOT / "services" / service / package / "migrations", database_url
        )
    settings = Settings(
        env=Environment.TEST,
        database_url=database_url,
        redis_url=args.redis_url,
        log=LogSettings(ship_endpoint=None),
        access_log=False,
        payments=PaymentsSettings(reconcile_interval_seconds=3600),
        payment=PaymentSettings(sandbox_webhook_secret=SECRET),
        plugins={"auth": {"jwks_url": f"http://127.0.0.1:{free_port()}/jwks.json"}},
    )
    webhooks = await webhook_rates(settings, database_url, args.webhooks, args.rounds)
    intents = await intent_rate(database_url, args.redis_url, args.intents)
    per_event, _ = webhooks.pop("statements")
    bare_wall, bare_cpu = webhooks.pop("bare")
    fastest = max(wall for wall, _ in webhooks.values())
    verdict = "met" if fastest >= 1000 and fastest >= bare_wall / 2 else "not met"
    _, single_cpu = webhooks["payments service, 1 in flight"]
    lines = [
        "| webhooks (`payment_intent.succeeded`, signed) | events/s | vs bare | "
        "events per CPU-second | vs bare (CPU) |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| bare `construct_event` + one INSERT | {bare_wall:,.0f} | 100%"
        f" | {bare_cpu:,.0f} | 100% |",
    ]
    lines += [
        f"| {name} | {wall:,.0f} | {wall / bare_wall:.0%} | {cpu:,.0f} | {cpu / bare_cpu:.0%} |"
        for name, (wall, cpu) in webhooks.items()
    ]
    lines += [
        "",
        "| intents through the gateway (sandbox provider, 8 in flight) | intents/s |",
        "| --- | ---: |",
        f"| `POST /api/v1/payments/intents` | {intents:,.0f} |",
        "",
        f"Statements per webhook event on the service's engine, its outbox relay"
        f" included: {per_event:.1f} (plus BEGIN, COMMIT and the pool's pre-ping), against"
        " one for the bare loop.",
        "",
        f"Goal (>= 1,000 webhooks/s and >= 50% of the bare loop): {verdict}. One at a time,"
        f" an event costs this process {1000 / single_cpu:.1f} ms of CPU (the ASGI client and"
        " app, FastAPI, the handler's two statements (claim, write) in one transaction, the"
        " outbox relay's own transaction and publish to Redis) against"
        f" {1000 / bare_cpu:.2f} ms for the bare loop. Best"
        f" of {args.rounds} alternating rounds; load average at the end of the run:"
        f" {os.getloadavg()[0]:.1f}.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "KEELSON_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("KEELSON_TEST_REDIS_URL", "redis://127.0.0.1:6379/12")
    )
    parser.add_argument("--webhooks", type=int, default=3000)
    parser.add_argument("--intents", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-docs", action="store_true", help="print only")
    args = parser.parse_args()
    with fresh_database(args.database_url, prefix="keelson_bench") as url:
        body = asyncio.run(bench(args, url))
    print(body)
    if not args.no_docs:
        command = "python bench/payments.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        write_section(
            "Payments",
            "\n".join(
                [
                    "Signed Stripe webhooks through the payments service beside the bare "
                    "verify-and-insert loop, and intents created through the gateway (see the "
                    "docstring of `bench/payments.py`).",
                    "",
                    f"Command: `{command}`",
                    "",
                    f"{platform.python_implementation()} {platform.python_version()}, "
                    f"{os.cpu_count()} CPUs shared with other work, so figures are noisy. "
                    f"Recorded {time.strftime('%Y-%m-%d %H:%M')}.",
                    "",
                    body,
                ]
            ),
        )


if __name__ == "__main__":
    main()

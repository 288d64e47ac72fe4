"""Signed webhooks per second through the payments service, beside the bare loop; intents/s.

    .venv/bin/python bench/payments.py --webhooks 1500 --intents 400 --rounds 3
    .venv/bin/python bench/payments.py --instructions --events 300

- webhooks: the real payments app (sandbox mode, Redis bus, outbox relay running) driven
  in-process over ASGI, one process and one event loop: `POST /api/v1/payments/webhooks/stripe`
  with a `payment_intent.succeeded` event signed with Stripe's scheme, each for an intent
  of its own, so every event is verified (`stripe.Webhook.construct_event`), de-duplicated,
  moves a state, writes a ledger row and an outbox row, committed before the answer;
  concurrent requests share a transaction (group commit), so the rows say how many
  events each commit held; with 1, 8 and 32 in flight;
- bare loop: `stripe.Webhook.construct_event` and one autocommit INSERT (asyncpg) per
  event, with as many in flight (and as many connections) as the service row beside it:
  the floor of any webhook endpoint at that concurrency. The two alternate in rounds (best
  of each is shown), so that both meet the same machine load;
- intents: `POST /api/v1/payments/intents` through the gateway (`python -m gateway`, JWT
  verified, rate limited, proxied) to `python -m payments_service` with the sandbox
  provider, 8 in flight, each with its own Idempotency-Key;
- `--instructions`: user-space instructions per event of the same loops (service, and bare
  loop), each in a child under valgrind's callgrind, counted only while the measured
  events run (`callgrind_control -i on/off`): stable on a loaded machine, unlike time.
  The service's figure includes the in-process HTTP client and the outbox relay.

A temporary database is created and dropped. Results are printed and written to the
"Payments" (or "Payments instructions per event") section of docs/benchmarks.md
(`--no-docs` to skip that).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import httpx
import stripe
from _suite import arguments, record, run
from prometheus_client import REGISTRY
from sqlalchemy import event as sa_event
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from keelson.config import Environment, LogSettings
from keelson.db import DB_ENGINE, create_engine, migrate
from keelson.payment import PaymentSettings
from keelson_dev.embedded import free_port
from keelson_dev.testing import ServiceProcess
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


class Batches:
    """Events per committed batch (`payments_webhook_batch_events`), between two reads."""

    def __init__(self) -> None:
        self.count, self.total = self._now()

    @staticmethod
    def _now() -> tuple[float, float]:
        count = REGISTRY.get_sample_value("payments_webhook_batch_events_count") or 0.0
        return count, REGISTRY.get_sample_value("payments_webhook_batch_events_sum") or 0.0

    def mean(self) -> float:
        count, total = self._now()
        return (total - self.total) / max(1.0, count - self.count)


IN_FLIGHT = (1, 8, 32)


async def webhook_rates(
    settings: Settings, database_url: str, n: int, rounds: int
) -> tuple[dict[int, dict[str, list[Rate]]], dict[int, float], float]:
    """Service and bare loop, at each concurrency, in alternating rounds (the same load).

    Returns the rates by concurrency and by side, the mean batch by concurrency, and the
    statements per event one at a time.
    """
    app = create_app(settings)
    results: dict[int, dict[str, list[Rate]]] = {k: {"bare": [], "service": []} for k in IN_FLIGHT}
    batch_sizes: dict[int, list[float]] = {k: [] for k in IN_FLIGHT}
    per_round = n // rounds
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://payments.bench") as c:

            async def service(in_flight: int) -> Rate:
                payloads = [succeeded_event(p) for p in await seed_intents(settings, per_round)]
                return await timed(per_round, in_flight, lambda i: post(c, payloads[i]))

            statements = Statements(app.state.container.resolve(DB_ENGINE))
            await service(1)  # warm up, and count the statements of each event
            per_event = statements.count / per_round
            statements.close()
            for _ in range(rounds):
                for in_flight in IN_FLIGHT:
                    results[in_flight]["bare"].append(
                        await bare_rate(database_url, per_round, in_flight)
                    )
                    batches = Batches()
                    results[in_flight]["service"].append(await service(in_flight))
                    batch_sizes[in_flight].append(batches.mean())
    mean_batch = {k: statistics.median(sizes) for k, sizes in batch_sizes.items()}
    return results, mean_batch, per_event


async def post(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post(
        "/api/v1/payments/webhooks/stripe",
        content=body,
        headers={"Stripe-Signature": signed(body)},
    )
    assert response.json()["outcome"] == "applied", response.text


async def bare_rate(database_url: str, n: int, in_flight: int) -> Rate:
    """`construct_event` + one autocommit INSERT per event, `in_flight` connections."""
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    pool = await asyncpg.create_pool(dsn, min_size=in_flight, max_size=in_flight)
    await pool.execute(
        "CREATE TABLE IF NOT EXISTS bench_webhooks (id text PRIMARY KEY, body jsonb)"
    )
    payloads = [succeeded_event(f"pi_{uuid.uuid4().hex}") for _ in range(n)]

    async def step(i: int) -> None:
        body = payloads[i]
        parsed = stripe.Webhook.construct_event(body, signed(body), SECRET)
        await pool.execute(
            "INSERT INTO bench_webhooks VALUES ($1, $2)", parsed["id"], body.decode()
        )

    try:
        return await timed(n, in_flight, step)
    finally:
        await pool.close()


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


def bench_settings(database_url: str, redis_url: str) -> Settings:
    return Settings(
        env=Environment.TEST,
        database_url=database_url,
        redis_url=redis_url,
        log=LogSettings(ship_endpoint=None),
        access_log=False,
        payments=PaymentsSettings(reconcile_interval_seconds=3600),
        payment=PaymentSettings(sandbox_webhook_secret=SECRET),
        plugins={"auth": {"jwks_url": f"http://127.0.0.1:{free_port()}/jwks.json"}},
    )


async def migrated(database_url: str) -> None:
    for service, package in (("auth", "auth_service"), ("payments", "payments_service")):
        await asyncio.to_thread(
            migrate, ROOT / "services" / service / package / "migrations", database_url
        )


async def bench(args: argparse.Namespace, database_url: str) -> str:
    await migrated(database_url)
    if args.instructions:
        return await instructions(args, database_url)
    settings = bench_settings(database_url, args.redis_url)
    rates, mean_batch, per_event = await webhook_rates(
        settings, database_url, args.webhooks, args.rounds
    )
    intents = await intent_rate(database_url, args.redis_url, args.intents)
    best_of = {k: {side: best(found) for side, found in r.items()} for k, r in rates.items()}
    met = [
        k
        for k, r in best_of.items()
        if r["service"][0] >= 1000 and r["service"][0] >= r["bare"][0] / 2
    ]
    most_cpu = best_of[IN_FLIGHT[-1]]["service"][1]
    lines = [
        "| webhooks in flight | bare loop events/s | service events/s | service vs bare"
        " (same in flight) | service CPU ms/event | bare CPU ms/event | events per commit |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for k, r in best_of.items():
        (bare_wall, bare_cpu), (wall, cpu) = r["bare"], r["service"]
        lines.append(
            f"| {k} | {bare_wall:,.0f} | {wall:,.0f} | {wall / bare_wall:.0%}"
            f" | {1000 / cpu:.2f} | {1000 / bare_cpu:.2f} | {mean_batch[k]:.1f} |"
        )
    lines += [
        "",
        "| intents through the gateway (sandbox provider, 8 in flight) | intents/s |",
        "| --- | ---: |",
        f"| `POST /api/v1/payments/intents` | {intents:,.0f} |",
        "",
        f"Statements per webhook event one at a time on the service's engine, its outbox"
        f" relay included: {per_event:.1f} (plus BEGIN, COMMIT and the pool's pre-ping),"
        " against one for the bare loop; with k events per commit the handler's two"
        " (claim, write) and the commit are shared by k.",
        "",
        "Goal (>= 1,000 webhooks/s and >= 50% of the bare loop at the same concurrency): "
        + (f"met at {', '.join(map(str, met))} in flight." if met else "not met.")
        + f" At {1000 / most_cpu:.2f} ms of CPU per event ({IN_FLIGHT[-1]} in flight) one"
        f" process does at most {most_cpu:,.0f} events/s on a core of its own; the"
        " wall-clock rows are lower where it gets less than a core (the load average)."
        + f" Best of {args.rounds} alternating rounds of {args.webhooks // args.rounds}"
        f" events each; load average at the end of the run: {os.getloadavg()[0]:.1f}.",
    ]
    return "\n".join(lines)


# Instructions per event (callgrind): the same loops in a child under valgrind, counted
# only while the measured events run.


async def instructions(args: argparse.Namespace, database_url: str) -> str:
    lines = [
        "| in flight | bare loop instructions/event | service instructions/event | vs bare |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for in_flight in (1, 8):
        bare = await asyncio.to_thread(count_instructions, args, database_url, "bare", in_flight)
        service = await asyncio.to_thread(
            count_instructions, args, database_url, "service", in_flight
        )
        lines.append(f"| {in_flight} | {bare:,.0f} | {service:,.0f} | {service / bare:.1f}x |")
    return "\n".join(lines)


def count_instructions(
    args: argparse.Namespace, database_url: str, side: str, in_flight: int
) -> float:
    """User-space instructions of this process per event (`side`: service or bare)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        child = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={out}",
                sys.executable,
                __file__,
                "--child",
                side,
                "--in-flight",
                str(in_flight),
                "--events",
                str(args.events),
                "--database-url",
                database_url,
                "--redis-url",
                args.redis_url,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert child.stdin is not None and child.stdout is not None

        def step(expect: str, control: list[str]) -> None:
            line = child.stdout.readline().strip()  # type: ignore[union-attr]
            assert line == expect, f"child said {line!r}"
            if control:
                subprocess.run(
                    ["callgrind_control", *control, str(child.pid)],
                    check=True,
                    stdout=subprocess.DEVNULL,
                )
            child.stdin.write("\n")  # type: ignore[union-attr]
            child.stdin.flush()  # type: ignore[union-attr]

        step("ready", ["-i", "on"])
        step("done", ["-i", "off"])
        child.wait(timeout=600)
        # "totals:" is what was counted while instrumentation was on ("summary:" says 0).
        (total,) = [
            line.split()[1] for line in out.read_text().splitlines() if line.startswith("totals:")
        ]
        return int(total) / args.events


async def child(args: argparse.Namespace) -> None:
    """Under valgrind: warm up, say ready, run the events when told, say done."""

    async def told(what: str) -> None:
        print(what, flush=True)
        await asyncio.to_thread(sys.stdin.readline)

    n = args.events
    if args.child == "bare":
        await bare_rate(args.database_url, 50, args.in_flight)
        await told("ready")
        await bare_rate(args.database_url, n, args.in_flight)
        await told("done")
        return
    settings = bench_settings(args.database_url, args.redis_url)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://payments.bench") as c:
            warm = [succeeded_event(p) for p in await seed_intents(settings, 50)]
            await timed(len(warm), args.in_flight, lambda i: post(c, warm[i]))
            payloads = [succeeded_event(p) for p in await seed_intents(settings, n)]
            await told("ready")
            await timed(n, args.in_flight, lambda i: post(c, payloads[i]))
            await told("done")


INSTRUCTIONS_INTRO = (
    "User-space instructions per signed webhook event, the service beside the bare"
    " verify-and-insert loop, each counted by callgrind in a child process while only the"
    " measured events run (see the docstring of `bench/payments.py`)."
)
NOTE = (
    "Like with like: each service row stands beside the bare loop at the same number in"
    " flight (as many asyncpg connections, each INSERT its own autocommit transaction, so"
    " PostgreSQL already shares WAL flushes between them); the service's figure also pays"
    " the in-process httpx client that drives it and its outbox relay (one transaction and"
    " one Redis XADD per event), which the bare loop has no counterpart for. Concurrent"
    " webhook requests share a transaction (group commit: the claim and the write are one"
    " statement each for the whole batch, then one COMMIT), so the handler's round trips"
    " and commit are divided by the events per commit; one at a time there is nothing to"
    " share and the figure is the old path's. User-space instructions per event (the"
    " section below) are the steadier before/after on this loaded machine."
)
INTRO = (
    "Signed Stripe webhooks through the payments service beside the bare verify-and-insert"
    " loop at the same concurrency, and intents created through the gateway (see the"
    " docstring of `bench/payments.py`)."
)


def main() -> None:
    parser = arguments(__doc__ or "", redis_db=12)
    parser.add_argument("--webhooks", type=int, default=1500)
    parser.add_argument("--intents", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions per event instead"
    )
    parser.add_argument("--events", type=int, default=300, help="events counted per run")
    parser.add_argument("--child", choices=("service", "bare"), help=argparse.SUPPRESS)
    parser.add_argument("--in-flight", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(child(args))
        return
    body = run(args, bench)
    if not args.no_docs:
        if args.instructions:
            record("Payments instructions per event", INSTRUCTIONS_INTRO, body)
        else:
            record("Payments", INTRO, body, notes=[NOTE])


if __name__ == "__main__":
    main()

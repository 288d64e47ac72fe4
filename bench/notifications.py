"""Emails per second end to end (bus event -> notifications service -> SMTP), and latency.

    .venv/bin/python bench/notifications.py --emails 5000 \
        --database-url postgresql://postgres@127.0.0.1:5432/postgres \
        --redis-url redis://127.0.0.1:6379/11

- end to end: `--emails` `payments.payment_succeeded` events published on the Redis bus as
  fast as possible; the notifications service (`python -m notifications_service`, its own
  process) turns each into a receipt row, renders the template and sends it over SMTP to
  a local aiosmtpd sink in this process; the clock runs from the first publish until the
  sink has accepted every message;
- raw: the same messages (built once, beforehand) sent by a plain aiosmtplib loop with as
  many connections as the service uses, to the same sink, in the same run;
- latency: events published at `--rate` per second for `--seconds`, each timed from its
  publish to the sink's acceptance of its mail (p50, p99).

With `--instructions`, the service runs under valgrind's callgrind instead, with
instrumentation off until the warm-up is done, and only the end-to-end run of `--emails`
is counted (`callgrind_control -i on/off`): user-space instructions per email, the
figure to compare before and after a change on a shared machine, where timings move
by 2x. Under valgrind the service is some 50 times slower (start-up takes a minute or
two), so its batches are fuller than at full speed. Needs valgrind (apt-get install
valgrind).

A temporary database is created and dropped; the Redis streams of the routed event types
are emptied first (give the bench a Redis database of its own). Results are printed and
written to the "Notifications" section of docs/benchmarks.md (`--no-docs` to skip that).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosmtplib
import httpx
import psutil
from _docs import write_section
from aiosmtpd.controller import Controller
from redis.asyncio import Redis

from keelson.bus import RedisBus, stream_key
from keelson.db import migrate
from keelson.events import PaymentSucceeded
from keelson_dev.embedded import free_port
from keelson_dev.testing import fresh_database
from notifications_service.channels import OutgoingMessage
from notifications_service.channels.email import build_email
from notifications_service.settings import DEFAULT_EVENT_ROUTES

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = ROOT / "services/notifications/notifications_service/migrations"
CONNECTIONS = 32
SENDER = "no-reply@keelson.localhost"
RAW_RECIPIENT = "raw@example.com"
_BENCH_DOMAIN = "@bench.example.com"
ROUTED = [*DEFAULT_EVENT_ROUTES, "auth.user_registered"]


@dataclass
class Sink:
    """Counts accepted messages and notes when each bench payment's mail arrived."""

    accepted: int = 0
    arrivals: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.perf_counter()
        with self.lock:
            self.accepted += 1
            for recipient in envelope.rcpt_tos:
                if recipient.endswith(_BENCH_DOMAIN):
                    self.arrivals[recipient] = now
        return "250 OK"

    def reset(self) -> None:
        with self.lock:
            self.accepted = 0
            self.arrivals.clear()


async def wait_for(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the sink did not receive every message in time")
        await asyncio.sleep(0.005)


def start_service(
    database: str, redis_url: str, smtp_port: int, workdir: Path, *, callgrind: bool = False
) -> Any:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEELSON_")}
    env.update(
        KEELSON_ENV="test",
        KEELSON_PORT=str(port),
        KEELSON_DATABASE_URL=database,
        KEELSON_REDIS_URL=redis_url,
        KEELSON_LOG__LEVEL="WARNING",
        KEELSON_LOG__SHIP_ENDPOINT=f"tcp://127.0.0.1:{free_port()}",
        KEELSON_LOG__SPILL_DIR=str(workdir / "spill"),
        KEELSON_NOTIFICATIONS__EMAIL__PORT=str(smtp_port),
        KEELSON_NOTIFICATIONS__EMAIL__CONNECTIONS=str(CONNECTIONS),
        KEELSON_NOTIFICATIONS__DELIVERY__CONCURRENCY=json.dumps({"email": CONNECTIONS}),
        KEELSON_NOTIFICATIONS__DELIVERY__POLL_INTERVAL_SECONDS="0.5",
        KEELSON_NOTIFICATIONS__CONSUMER_GROUP=f"bench-{uuid.uuid4().hex[:8]}",
    )
    valgrind = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={workdir / 'callgrind.out'}",
    ]
    process = subprocess.Popen(
        [*(valgrind if callgrind else []), sys.executable, "-m", "notifications_service"],
        env=env,
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "notifications.log").open("wb"),
    )
    deadline = time.monotonic() + (600 if callgrind else 60)
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError((workdir / "notifications.log").read_text()[-3000:])
        time.sleep(0.2)


def event(run: str, n: int) -> PaymentSucceeded:
    return PaymentSucceeded(
        payment_id=f"bench-{run}-{n}",
        amount=1000 + n,
        currency="EUR",
        email=f"{run}-{n}{_BENCH_DOMAIN}",
    )


async def end_to_end(bus: RedisBus, sink: Sink, count: int) -> float:
    sink.reset()
    run = uuid.uuid4().hex[:8]
    events = [event(run, n) for n in range(count)]
    started = time.perf_counter()
    for chunk in range(0, count, 32):
        await asyncio.gather(*(bus.publish(e) for e in events[chunk : chunk + 32]))
    expected = {str(e.email) for e in events}
    await wait_for(lambda: expected <= sink.arrivals.keys(), timeout=600)
    return time.perf_counter() - started


async def raw_loop(port: int, sink: Sink, messages: list[bytes]) -> float:
    sink.reset()
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for message in messages:
        queue.put_nowait(message)

    async def sender() -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await smtp.connect()
        while not queue.empty():
            await smtp.sendmail(SENDER, [RAW_RECIPIENT], queue.get_nowait())
        await smtp.quit()

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(CONNECTIONS)))
    await wait_for(lambda: sink.accepted >= len(messages), timeout=600)
    return time.perf_counter() - started


async def latency(bus: RedisBus, sink: Sink, rate: int, seconds: float) -> list[float]:
    sink.reset()
    run = uuid.uuid4().hex[:8]
    published: dict[str, float] = {}
    total = int(rate * seconds)
    start = time.perf_counter()
    for n in range(total):
        due = start + n / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        e = event(run, n)
        published[str(e.email)] = time.perf_counter()
        await bus.publish(e)
    await wait_for(lambda: published.keys() <= sink.arrivals.keys(), timeout=120)
    return sorted(sink.arrivals[k] - published[k] for k in published)


def messages_like_the_service(count: int) -> list[bytes]:
    """What the service sends for a receipt, built ahead (the raw loop only sends)."""
    from notifications_service.templates import TemplateRenderer

    renderer = TemplateRenderer()
    out = []
    for n in range(count):
        data = {**event("raw", n).model_dump(mode="json"), "email": RAW_RECIPIENT}
        rendered = renderer.render("payment_receipt", {**data, "base_url": "http://x"})
        message = OutgoingMessage(
            id=str(uuid.uuid4()),
            recipient=data["email"],
            subject=rendered.subject,
            text=rendered.text,
            html=rendered.html,
            transactional=False,
            unsubscribe_url="http://127.0.0.1:8000/settings/notifications?category=billing",
        )
        out.append(build_email(message, sender=f"Keelson <{SENDER}>"))
    return out


async def instructions_per_email(args: argparse.Namespace, database: str, workdir: Path) -> float:
    """User-space instructions the service runs per email, counted under callgrind."""
    sink = Sink()
    smtp_port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    service = start_service(database, args.redis_url, smtp_port, workdir, callgrind=True)
    redis = Redis.from_url(args.redis_url)
    await redis.delete(*(stream_key(topic) for topic in ROUTED))
    bus = RedisBus(redis, producer="payments")
    try:
        await end_to_end(bus, sink, min(200, args.emails))  # warm up, uncounted
        subprocess.run(["callgrind_control", "-i", "on", str(service.pid)], check=True)
        await end_to_end(bus, sink, args.emails)
        subprocess.run(["callgrind_control", "-i", "off", str(service.pid)], check=True)
    finally:
        service.terminate()  # first: a Redis error below must not leave it running
        service.wait(120)
        await redis.delete(*(stream_key(topic) for topic in ROUTED))
        await redis.aclose()
        controller.stop()
    total = 0
    for dump in workdir.glob("callgrind.out*"):
        counts = [
            int(line.split()[1])
            for line in dump.read_text(errors="replace").splitlines()
            if line.startswith(("summary:", "totals:"))
        ]
        total += max(counts, default=0)  # a dump states its total twice
    return total / args.emails


@dataclass
class Round:
    e2e_seconds: float
    raw_seconds: float
    service_cpu_seconds: float


async def run(
    args: argparse.Namespace, database: str, workdir: Path
) -> tuple[list[Round], list[float]]:
    sink = Sink()
    smtp_port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    service = start_service(database, args.redis_url, smtp_port, workdir)
    redis = Redis.from_url(args.redis_url)
    # A new consumer group reads its streams from the start: begin with empty ones.
    await redis.delete(*(stream_key(topic) for topic in ROUTED))
    bus = RedisBus(redis, producer="payments")
    cpu: list[float] = []
    try:
        await end_to_end(bus, sink, min(200, args.emails))  # warm up: connections, caches
        raw_messages = messages_like_the_service(args.emails)
        rounds = []
        usage = psutil.Process(service.pid)
        for _ in range(args.runs):
            cpu_before = sum(usage.cpu_times()[:2])
            e2e = await end_to_end(bus, sink, args.emails)
            cpu.append(sum(usage.cpu_times()[:2]) - cpu_before)
            raw = await raw_loop(smtp_port, sink, raw_messages)
            rounds.append(Round(e2e, raw, cpu[-1]))
            print(
                f"end to end {args.emails / e2e:,.0f}/s, raw {args.emails / raw:,.0f}/s, "
                f"service CPU {cpu[-1] / args.emails * 1e3:.2f} ms/email"
            )
        latencies = await latency(bus, sink, args.rate, args.seconds)
    finally:
        service.terminate()  # first: a Redis error below must not leave it running
        service.wait(30)
        # Leave no backlog for the next consumer group that reads these streams from 0.
        await redis.delete(*(stream_key(topic) for topic in ROUTED))
        await redis.aclose()
        controller.stop()
    return rounds, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("KEELSON_TEST_DATABASE_URL"))
    parser.add_argument(
        "--redis-url", default=os.environ.get("KEELSON_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
    )
    parser.add_argument("--emails", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count the service's instructions per email under callgrind (nothing else)",
    )
    args = parser.parse_args()
    server = args.database_url or "postgresql://postgres@127.0.0.1:5432/postgres"
    if args.instructions:
        with (
            fresh_database(server, prefix="keelson_bench_notif") as database,
            tempfile.TemporaryDirectory() as tmp,
        ):
            migrate(MIGRATIONS, database)
            per_email = asyncio.run(instructions_per_email(args, database, Path(tmp)))
        print(f"{args.emails:,} emails: {per_email:,.0f} instructions per email (service)")
        return

    with (
        fresh_database(server, prefix="keelson_bench_notif") as database,
        tempfile.TemporaryDirectory() as tmp,
    ):
        migrate(MIGRATIONS, database)
        rounds, latencies = asyncio.run(run(args, database, Path(tmp)))
    n = args.emails
    lines = [
        "| run | emails | end to end s | end to end emails/s | service CPU ms/email "
        "| raw s | raw emails/s | ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    ratios = []
    for i, r in enumerate(rounds, 1):
        ratios.append(r.raw_seconds / r.e2e_seconds)
        lines.append(
            f"| {i} | {n:,} | {r.e2e_seconds:.2f} | {n / r.e2e_seconds:,.0f} | "
            f"{r.service_cpu_seconds / n * 1e3:.2f} | "
            f"{r.raw_seconds:.2f} | {n / r.raw_seconds:,.0f} | {ratios[-1]:.0%} |"
        )
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    e2e_median = statistics.median(n / r.e2e_seconds for r in rounds)
    lines += [
        "",
        f"Median end to end: **{e2e_median:,.0f} emails/s** (goal >= 500); median ratio to the "
        f"raw aiosmtplib loop **{statistics.median(ratios):.0%}** (goal >= 50%).",
        "",
        f"Latency from publish to the sink's acceptance at {args.rate} events/s for "
        f"{args.seconds:.0f} s ({len(latencies):,} emails): p50 **{p50:.0f} ms**, "
        f"p99 **{p99:.0f} ms** (goal: p99 <= 1 s).",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_docs:
        command = ".venv/bin/python bench/notifications.py " + shlex.join(
            [
                "--database-url", server,
                "--redis-url", args.redis_url,
                "--emails", str(n),
                "--runs", str(args.runs),
            ]
        )  # fmt: skip
        write_docs(body, command)


def write_docs(body: str, command: str) -> None:
    section = "\n".join(
        [
            "`payments.payment_succeeded` events published on the Redis bus, turned by the "
            "notifications service (its own process) into receipt rows, rendered and sent "
            f"over {CONNECTIONS} SMTP connections to an aiosmtpd sink, timed until the sink "
            "has accepted every mail; beside a raw aiosmtplib loop sending the same number "
            "of pre-built messages over as many connections to the same sink in the same run "
            "(see the docstring of `bench/notifications.py`).",
            "",
            f"Command: `{command}`",
            "",
            f"{platform.python_implementation()} {platform.python_version()}, "
            f"{os.cpu_count()} CPUs shared by the publisher and sink (one process), the "
            "service, Postgres, Redis and other work, so figures are noisy. Recorded "
            f"{time.strftime('%Y-%m-%d %H:%M')}.",
            "",
            body,
            "",
            "Where the time goes: the raw loop only sends bytes it was handed; the service "
            "also writes each email in Postgres (the notification rows of the events a bus "
            "consumer read together, in one INSERT and commit; the claim, the sent mark and "
            "the attempt row, batched), renders three templates and builds the MIME bytes. "
            "Its own CPU is the "
            "column above; the rest of an email's time is waiting for Postgres, which shares "
            "the 2 CPUs with the service, Redis, the publisher and the sink (which run the "
            "raw loop too, while the service is idle) and other sessions' work, so the "
            "figures move by about 2x from run to run.",
        ]
    )
    write_section("Notifications", section)


if __name__ == "__main__":
    main()

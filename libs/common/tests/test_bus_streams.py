import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from keelson.bus import TOPICS_KEY, RedisBus, dead_letter_key, stream_key
from keelson.config import BusSettings
from keelson.events import Envelope
from keelson.logging import trace_id_var
from keelson_dev.testing import eventually

FAST = BusSettings(block_ms=50, claim_idle_ms=200, max_deliveries=3, batch_size=50)


def envelope(topic: str, **data: object) -> Envelope:
    return Envelope(type=topic, producer="tests", data=dict(data))


@pytest.fixture
def ns() -> str:
    """A namespace of topics and groups that no other test uses."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def buses(redis: Redis) -> AsyncIterator[Callable[..., RedisBus]]:
    made: list[RedisBus] = []

    def make(settings: BusSettings = FAST, **kwargs: object) -> RedisBus:
        bus = RedisBus(redis, producer="tests", settings=settings, **kwargs)  # type: ignore[arg-type]
        made.append(bus)
        return bus

    yield make
    for bus in made:
        await bus.stop()


async def test_wildcards_route_each_topic_to_the_matching_subscriptions(
    buses: Callable[..., RedisBus], ns: str
) -> None:
    bus = buses()
    got: dict[str, list[str]] = {"all_payments": [], "one_topic": [], "everything": []}

    def record(name: str) -> Callable[[Envelope], Awaitable[None]]:
        async def handler(env: Envelope) -> None:
            got[name].append(env.type)

        return handler

    bus.subscribe(f"{ns}.payments.*", record("all_payments"), group=f"{ns}-a")
    bus.subscribe(f"{ns}.payments.refunded", record("one_topic"), group=f"{ns}-b")
    bus.subscribe(f"{ns}.*", record("everything"), group=f"{ns}-c")
    await bus.start()

    for topic in ("payments.paid", "payments.refunded", "auth.registered"):
        await bus.publish(envelope(f"{ns}.{topic}"))

    await eventually(lambda: len(got["everything"]) == 3 and len(got["all_payments"]) == 2)
    await eventually(lambda: len(got["one_topic"]) == 1)
    assert sorted(got["all_payments"]) == [f"{ns}.payments.paid", f"{ns}.payments.refunded"]
    assert got["one_topic"] == [f"{ns}.payments.refunded"]
    assert sorted(got["everything"]) == sorted(
        f"{ns}.{t}" for t in ("payments.paid", "payments.refunded", "auth.registered")
    )
    labels = {"topic": f"{ns}.payments.paid", "group": f"{ns}-a", "outcome": "ok"}
    assert REGISTRY.get_sample_value("bus_events_handled_total", labels) == 1


async def test_a_topic_that_appears_after_start_reaches_a_wildcard_subscriber(
    buses: Callable[..., RedisBus], ns: str
) -> None:
    subscriber, publisher = buses(), buses()
    got: list[Envelope] = []

    async def handler(env: Envelope) -> None:
        got.append(env)

    subscriber.subscribe(f"{ns}.*", handler, group=f"{ns}-late")
    await subscriber.start()
    await subscriber.wait_ready()

    sent = await publisher.publish(envelope(f"{ns}.brand_new", n=1))

    await eventually(lambda: [e.id for e in got] == [sent.id])
    assert got[0].data == {"n": 1}


async def test_publish_many_adds_each_event_in_order_and_registers_new_topics(
    buses: Callable[..., RedisBus], redis: Redis, ns: str
) -> None:
    subscriber, publisher = buses(), buses()
    got: list[Envelope] = []

    async def handler(env: Envelope) -> None:
        got.append(env)

    subscriber.subscribe(f"{ns}.*", handler, group=f"{ns}-many")
    await subscriber.start()
    await subscriber.wait_ready()

    events = [envelope(f"{ns}.{topic}", n=n) for n, topic in enumerate("abab")]
    sent = await publisher.publish_many(events)

    assert [e.id for e in sent] == [e.id for e in events]
    for topic in "ab":
        entries = await redis.xrange(stream_key(f"{ns}.{topic}"))
        assert [Envelope.from_json(f[b"e"]).data["n"] for _, f in entries] == (
            [0, 2] if topic == "a" else [1, 3]
        )
    assert {f"{ns}.a", f"{ns}.b"} <= {t.decode() for t in await redis.smembers(TOPICS_KEY)}
    await eventually(lambda: len(got) == 4)  # found by the wildcard: the topics are known
    assert await publisher.publish_many([]) == []


async def test_every_group_gets_each_event_and_a_group_shares_them_among_consumers(
    buses: Callable[..., RedisBus], ns: str
) -> None:
    one_at_a_time = BusSettings(block_ms=50, claim_idle_ms=60_000, batch_size=1)
    topic = f"{ns}.order_placed"
    audit: list[str] = []
    shared: dict[str, list[str]] = {"first": [], "second": []}
    both_busy = asyncio.Event()

    async def audit_handler(env: Envelope) -> None:
        audit.append(env.id)

    def worker(name: str) -> Callable[[Envelope], Awaitable[None]]:
        async def handler(env: Envelope) -> None:
            shared[name].append(env.id)
            if shared["first"] and shared["second"]:
                both_busy.set()
            # Hold the first event until the other consumer has one: they must share.
            await asyncio.wait_for(both_busy.wait(), timeout=10)

        return handler

    first, second = buses(one_at_a_time), buses(one_at_a_time)
    first.subscribe(topic, worker("first"), group=f"{ns}-workers")
    second.subscribe(topic, worker("second"), group=f"{ns}-workers")
    first.subscribe(topic, audit_handler, group=f"{ns}-audit")
    await first.start()
    await second.start()

    sent = [(await first.publish(envelope(topic, n=i))).id for i in range(20)]

    await eventually(lambda: len(shared["first"]) + len(shared["second"]) == 20)
    await eventually(lambda: len(audit) == 20)
    assert shared["first"] and shared["second"]
    assert sorted(shared["first"] + shared["second"]) == sorted(sent)
    assert sorted(audit) == sorted(sent)


async def test_a_failed_handler_is_retried_and_its_error_forgotten_on_success(
    buses: Callable[..., RedisBus], redis: Redis, ns: str
) -> None:
    topic = f"{ns}.flaky"
    attempts: list[str] = []

    async def flaky(env: Envelope) -> None:
        attempts.append(env.id)
        if len(attempts) == 1:
            raise RuntimeError("transient")

    bus = buses()
    bus.subscribe(topic, flaky, group=f"{ns}-g")
    await bus.start()
    sent = await bus.publish(envelope(topic))

    await eventually(lambda: len(attempts) == 2)
    await eventually(lambda: _pending(redis, topic, f"{ns}-g", expect=0))
    assert attempts == [sent.id, sent.id]
    assert await redis.hlen(f"bus:errors:{ns}-g") == 0
    assert await redis.xlen(dead_letter_key(topic)) == 0


async def test_after_max_deliveries_failures_the_event_goes_to_the_dead_letter_stream(
    buses: Callable[..., RedisBus], redis: Redis, ns: str
) -> None:
    topic = f"{ns}.poison"
    attempts: list[str] = []

    async def always_fails(env: Envelope) -> None:
        attempts.append(env.id)
        raise ValueError(f"cannot handle {env.data['n']}")

    bus = buses()
    bus.subscribe(topic, always_fails, group=f"{ns}-g")
    await bus.start()
    dead_before = REGISTRY.get_sample_value("bus_dead_letters_total", {"topic": topic}) or 0
    sent = await bus.publish(envelope(topic, n=7))

    await eventually(lambda: _xlen(redis, dead_letter_key(topic), 1))
    [(_, fields)] = await redis.xrange(dead_letter_key(topic))
    assert attempts == [sent.id] * FAST.max_deliveries
    assert Envelope.from_json(fields[b"e"]).id == sent.id
    assert fields[b"error"] == b"ValueError: cannot handle 7"
    assert fields[b"group"] == f"{ns}-g".encode()
    assert int(fields[b"deliveries"]) == FAST.max_deliveries
    assert await _pending(redis, topic, f"{ns}-g", expect=0)
    dead_after = REGISTRY.get_sample_value("bus_dead_letters_total", {"topic": topic})
    assert dead_after == dead_before + 1


async def test_an_entry_that_is_not_an_envelope_is_dead_lettered_at_once(
    buses: Callable[..., RedisBus], redis: Redis, ns: str
) -> None:
    topic = f"{ns}.garbage"
    handled: list[Envelope] = []

    async def handler(env: Envelope) -> None:
        handled.append(env)

    bus = buses()
    bus.subscribe(topic, handler, group=f"{ns}-g")
    await bus.start()
    await bus.wait_ready()
    await redis.xadd(stream_key(topic), {b"e": b"{not json"})
    good = await bus.publish(envelope(topic))

    await eventually(lambda: [e.id for e in handled] == [good.id])
    await eventually(lambda: _xlen(redis, dead_letter_key(topic), 1))
    [(_, fields)] = await redis.xrange(dead_letter_key(topic))
    assert fields[b"error"].startswith(b"undecodable entry")


async def test_dedupe_skips_an_event_delivered_twice(
    buses: Callable[..., RedisBus], ns: str
) -> None:
    topic = f"{ns}.once"
    handled: list[str] = []

    async def handler(env: Envelope) -> None:
        handled.append(env.id)

    bus = buses()
    bus.subscribe(topic, handler, group=f"{ns}-g", dedupe=True)
    await bus.start()
    twice = envelope(topic)
    await bus.publish(twice)
    await eventually(lambda: handled == [twice.id])
    await bus.publish(twice)  # e.g. an outbox relay that crashed before marking it
    after = await bus.publish(envelope(topic))

    await eventually(lambda: after.id in handled)
    assert handled == [twice.id, after.id]


async def test_health_reports_the_transport_and_lag_is_measured(
    buses: Callable[..., RedisBus], ns: str
) -> None:
    async def handler(env: Envelope) -> None:
        pass

    bus = buses()
    bus.subscribe(f"{ns}.x", handler, group=f"{ns}-g")
    await bus.start()

    health = await bus.health()

    assert health.ok
    assert "redis streams" in health.detail
    lag = {"stream": stream_key(f"{ns}.x"), "group": f"{ns}-g"}
    await eventually(lambda: REGISTRY.get_sample_value("bus_consumer_lag", lag) == 0)


_VICTIM = textwrap.dedent(
    """
    import asyncio, sys
    from redis.asyncio import Redis
    from keelson.bus import RedisBus
    from keelson.config import BusSettings

    async def main(url, topic, group):
        redis = Redis.from_url(url)
        bus = RedisBus(redis, producer="victim", consumer="victim",
                       settings=BusSettings(block_ms=50, claim_idle_ms=200))

        async def handler(env):
            print("handling", env.id, flush=True)
            await asyncio.Event().wait()  # blocks until the process is killed

        bus.subscribe(topic, handler, group=group)
        await bus.start()
        await bus.wait_ready()
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main(*sys.argv[1:]))
    """
)


async def test_an_event_whose_consumer_is_killed_mid_handler_is_handled_again(
    buses: Callable[..., RedisBus], redis: Redis, redis_url: str, ns: str
) -> None:
    topic, group = f"{ns}.durable", f"{ns}-g"
    victim = subprocess.Popen(
        [sys.executable, "-c", _VICTIM, redis_url, topic, group],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert victim.stdout is not None
        assert await asyncio.to_thread(victim.stdout.readline) == "ready\n"
        publisher = buses()
        sent = await publisher.publish(envelope(topic, amount=100))
        line = await asyncio.to_thread(victim.stdout.readline)
        assert line == f"handling {sent.id}\n"
        [pending] = await redis.xpending_range(stream_key(topic), group, "-", "+", 10)
        assert pending["consumer"] == b"victim"
        victim.send_signal(signal.SIGKILL)
        assert await asyncio.to_thread(victim.wait, 10) == -signal.SIGKILL
    finally:
        victim.kill()
        victim.wait()
        if victim.stdout is not None:
            victim.stdout.close()

    handled: list[Envelope] = []

    async def survivor(env: Envelope) -> None:
        handled.append(env)

    rescuer = buses()
    rescuer.subscribe(topic, survivor, group=group)
    await rescuer.start()

    await eventually(lambda: len(handled) == 1)
    assert handled[0].id == sent.id
    assert handled[0].data == {"amount": 100}
    await eventually(lambda: _pending(redis, topic, group, expect=0))


async def _pending(redis: Redis, topic: str, group: str, *, expect: int) -> bool:
    summary = await redis.xpending(stream_key(topic), group)
    return bool(summary["pending"] == expect)


async def _xlen(redis: Redis, key: str, expect: int) -> bool:
    return bool(await redis.xlen(key) == expect)


async def test_handlers_run_under_the_events_trace_id(
    buses: Callable[..., RedisBus], ns: str
) -> None:
    seen: list[str | None] = []

    async def handler(env: Envelope) -> None:
        seen.append(trace_id_var.get())

    bus = buses()
    bus.subscribe(f"{ns}.traced", handler, group=f"{ns}-g")
    await bus.start()
    await bus.publish(Envelope(type=f"{ns}.traced", producer="tests", trace_id="trace-42"))

    await eventually(lambda: seen == ["trace-42"])


async def test_a_batch_handler_gets_the_events_read_together_and_only_its_failures_come_back(
    buses: Callable[..., RedisBus], redis: Redis, ns: str
) -> None:
    topic = f"{ns}.batched"
    batches: list[list[int]] = []

    async def handle(envelopes: Sequence[Envelope]) -> dict[str, Exception]:
        batches.append([int(str(e.data["n"])) for e in envelopes])
        return {
            e.id: ValueError(f"cannot handle {e.data['n']}") for e in envelopes if e.data["n"] == 2
        }

    bus = buses()
    sent = [await bus.publish(envelope(topic, n=n)) for n in range(5)]  # before the group reads
    bus.subscribe_batch(topic, handle, group=f"{ns}-g")
    await bus.start()

    await eventually(lambda: _xlen(redis, dead_letter_key(topic), 1))
    assert batches == [[0, 1, 2, 3, 4]] + [[2]] * (FAST.max_deliveries - 1)
    [(_, fields)] = await redis.xrange(dead_letter_key(topic))
    assert Envelope.from_json(fields[b"e"]).id == sent[2].id
    assert fields[b"error"] == b"ValueError: cannot handle 2"
    assert await _pending(redis, topic, f"{ns}-g", expect=0)


async def test_a_batch_handler_that_raises_fails_every_event_and_per_event_handlers_go_first(
    buses: Callable[..., RedisBus], redis: Redis, ns: str
) -> None:
    topic = f"{ns}.mixed"
    calls: list[tuple[str, list[int]]] = []

    async def one(env: Envelope) -> None:
        calls.append(("one", [int(str(env.data["n"]))]))
        if env.data["n"] == 0:
            raise RuntimeError("no")

    async def batch(envelopes: Sequence[Envelope]) -> dict[str, Exception]:
        calls.append(("batch", [int(str(e.data["n"])) for e in envelopes]))
        if len(calls) <= 4:
            raise RuntimeError("the whole batch failed")
        return {}

    bus = buses(BusSettings(block_ms=50, claim_idle_ms=200, max_deliveries=5, batch_size=50))
    for n in range(3):
        await bus.publish(envelope(topic, n=n))
    bus.subscribe(topic, one, group=f"{ns}-g")
    bus.subscribe_batch(topic, batch, group=f"{ns}-g")
    await bus.start()

    await eventually(lambda: _xlen(redis, dead_letter_key(topic), 1))  # 0, on its 5th try
    assert calls[:4] == [("one", [0]), ("one", [1]), ("one", [2]), ("batch", [1, 2])]
    assert [n for name, n in calls if name == "batch"] == [[1, 2], [1, 2]]
    assert [n[0] for name, n in calls if name == "one"] == [0, 1, 2, 0, 1, 2, 0, 0, 0]
    assert await _pending(redis, topic, f"{ns}-g", expect=0)

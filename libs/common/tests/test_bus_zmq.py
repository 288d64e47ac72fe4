from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import pytest
import zmq

from keelson.bus import ZmqBroker, ZmqBus
from keelson.events import Envelope, UserRegistered
from keelson_dev.embedded import free_port
from keelson_dev.testing import eventually


@pytest.fixture
def broker() -> Iterator[ZmqBroker]:
    broker = ZmqBroker(f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
async def buses(broker: ZmqBroker) -> AsyncIterator[Callable[[str], ZmqBus]]:
    made: list[ZmqBus] = []

    def make(producer: str) -> ZmqBus:
        bus = ZmqBus(
            producer=producer,
            xsub_endpoint=broker.xsub_endpoint,
            xpub_endpoint=broker.xpub_endpoint,
        )
        made.append(bus)
        return bus

    yield make
    for bus in made:
        await bus.stop()


async def test_events_cross_the_broker_by_topic_and_wildcard(
    buses: Callable[[str], ZmqBus],
) -> None:
    subscriber, publisher = buses("notifications"), buses("auth")
    got: dict[str, list[Envelope]] = {"exact": [], "wildcard": [], "other": []}

    def record(name: str) -> Callable[[Envelope], Any]:
        async def handler(env: Envelope) -> None:
            got[name].append(env)

        return handler

    subscriber.subscribe("auth.user_registered", record("exact"), group="welcome")
    subscriber.subscribe("auth.*", record("wildcard"), group="audit")
    subscriber.subscribe("payments.*", record("other"), group="receipts")
    await subscriber.start()
    await publisher.start()
    await subscriber.wait_ready()
    await publisher.wait_ready()

    sent = await publisher.publish(UserRegistered(user_id="u1", email="ada@example.com"))
    # Shares the exact subscription's prefix; must reach only the wildcard.
    longer = await publisher.publish(Envelope(type="auth.user_registered_v2", producer="auth"))

    await eventually(lambda: len(got["wildcard"]) == 2 and len(got["exact"]) == 1)
    assert got["exact"][0].id == sent.id
    assert got["exact"][0].producer == "auth"
    assert got["exact"][0].data["email"] == "ada@example.com"
    assert [e.id for e in got["wildcard"]] == [sent.id, longer.id]
    assert got["other"] == []


async def test_publish_many_sends_each_event_in_order(buses: Callable[[str], ZmqBus]) -> None:
    subscriber, publisher = buses("notifications"), buses("auth")
    got: list[Envelope] = []

    async def handler(env: Envelope) -> None:
        got.append(env)

    subscriber.subscribe("auth.*", handler, group="audit")
    await subscriber.start()
    await publisher.start()
    await subscriber.wait_ready()
    await publisher.wait_ready()

    sent = await publisher.publish_many(
        [Envelope(type="auth.step", producer="auth", data={"n": n}) for n in range(5)]
    )

    await eventually(lambda: len(got) == 5)
    assert [e.id for e in got] == [e.id for e in sent]
    assert [e.data["n"] for e in got] == list(range(5))


async def test_broadcasts_and_late_subscriptions(buses: Callable[[str], ZmqBus]) -> None:
    listener, sender = buses("gateway"), buses("auth")
    revoked: list[dict[str, Any]] = []
    late: list[Envelope] = []

    async def on_revocation(payload: dict[str, Any]) -> None:
        revoked.append(payload)

    async def on_refund(env: Envelope) -> None:
        late.append(env)

    await listener.start()
    await sender.start()
    listener.on_broadcast("auth.revocations", on_revocation)
    listener.subscribe("payments.refund_succeeded", on_refund, group="g")
    await listener.wait_ready()
    await sender.wait_ready()

    await sender.broadcast("auth.revocations", {"jti": "j1"})
    refund = await sender.publish(Envelope(type="payments.refund_succeeded", producer="p"))

    await eventually(lambda: revoked == [{"jti": "j1"}] and len(late) == 1)
    assert late[0].id == refund.id


async def test_a_failed_handler_is_not_retried_but_the_next_event_is_handled(
    buses: Callable[[str], ZmqBus],
) -> None:
    bus = buses("svc")
    calls: list[int] = []

    async def handler(env: Envelope) -> None:
        calls.append(env.data["n"])
        if env.data["n"] == 1:
            raise RuntimeError("boom")

    bus.subscribe("svc.thing", handler, group="g")
    await bus.start()
    await bus.wait_ready()

    await bus.publish(Envelope(type="svc.thing", producer="svc", data={"n": 1}))
    await bus.publish(Envelope(type="svc.thing", producer="svc", data={"n": 2}))

    await eventually(lambda: calls == [1, 2])
    assert (await bus.health()).ok


async def test_a_batch_handler_gets_each_event_alone_on_zeromq(
    buses: Callable[[str], ZmqBus],
) -> None:
    bus = buses("svc")
    batches: list[list[int]] = []

    async def handler(envelopes: Sequence[Envelope]) -> dict[str, Exception]:
        batches.append([int(str(e.data["n"])) for e in envelopes])
        return {e.id: RuntimeError("boom") for e in envelopes if e.data["n"] == 1}

    bus.subscribe_batch("svc.batched", handler, group="g")
    await bus.start()
    await bus.wait_ready()

    for n in (1, 2):
        await bus.publish(Envelope(type="svc.batched", producer="svc", data={"n": n}))

    await eventually(lambda: batches == [[1], [2]])  # a failure is not retried (at most once)


async def test_without_a_broker_wait_ready_times_out_and_health_says_so() -> None:
    bus = ZmqBus(
        producer="svc",
        xsub_endpoint=f"tcp://127.0.0.1:{free_port()}",
        xpub_endpoint=f"tcp://127.0.0.1:{free_port()}",
    )
    await bus.start()
    try:
        with pytest.raises(TimeoutError):
            await bus.wait_ready(timeout=0.3)
        health = await bus.health()
        assert not health.ok
        assert not health.critical
    finally:
        await bus.stop()


def test_a_second_broker_on_the_same_endpoints_fails_at_start(broker: ZmqBroker) -> None:
    with pytest.raises(zmq.ZMQError):
        ZmqBroker(broker.xsub_endpoint, f"tcp://127.0.0.1:{free_port()}").start()
    assert broker.running

import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic.migration import MigrationContext
from alembic.operations import Operations
from redis.asyncio import Redis
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from keelson.bus import BUS, RedisBus
from keelson.config import BusSettings, PluginSettings
from keelson.db import DB_SESSIONS
from keelson.events import Envelope, PasswordResetRequested, PaymentSucceeded
from keelson.outbox import (
    OutboxRelay,
    OutboxRelayPlugin,
    add_to_outbox,
    create_outbox_tables,
    drop_outbox_tables,
    mark_processed,
)
from keelson.plugins import PluginError
from keelson.service import build_container
from keelson_dev.testing import eventually, make_settings

SCHEMA = f"outbox_{uuid.uuid4().hex[:8]}"
FAST = BusSettings(block_ms=50, claim_idle_ms=200)


def _migrate(conn: Connection, step: Callable[[str], None]) -> None:
    with Operations.context(MigrationContext.configure(conn)):
        step(SCHEMA)


@pytest.fixture(scope="module")
async def engine(test_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(
        test_database_url, connect_args={"server_settings": {"search_path": f"{SCHEMA},public"}}
    )
    async with engine.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{SCHEMA}"'))
        await conn.run_sync(_migrate, create_outbox_tables)
    yield engine
    async with engine.begin() as conn:
        await conn.run_sync(_migrate, drop_outbox_tables)
        await conn.execute(text(f'DROP SCHEMA "{SCHEMA}"'))
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@pytest.fixture
async def bus(redis: Redis) -> AsyncIterator[RedisBus]:
    bus = RedisBus(redis, producer="payments", settings=FAST)
    yield bus
    await bus.stop()


@pytest.fixture
async def relays(engine: AsyncEngine, bus: RedisBus) -> AsyncIterator[Callable[..., OutboxRelay]]:
    made: list[OutboxRelay] = []

    def make(**options: Any) -> OutboxRelay:
        options.setdefault("bus", bus)
        relay = OutboxRelay(engine, producer="payments", **options)
        made.append(relay)
        relay.start()
        return relay

    yield make
    for relay in made:
        await relay.stop()


def payment(n: int = 1) -> PaymentSucceeded:
    return PaymentSucceeded(payment_id=f"pay_{n}", amount=100 * n, currency="EUR")


async def listen(bus: RedisBus, topic: str, **options: Any) -> list[Envelope]:
    got: list[Envelope] = []

    async def handler(env: Envelope) -> None:
        got.append(env)

    bus.subscribe(topic, handler, group=f"g{uuid.uuid4().hex[:8]}", **options)
    await bus.start()
    await bus.wait_ready()
    return got


async def rows(engine: AsyncEngine, event_id: str) -> list[Any]:
    async with engine.connect() as conn:
        result = await conn.execute(
            text("SELECT topic, published_at FROM outbox WHERE payload->>'id' = :id"),
            {"id": event_id},
        )
        return list(result.all())


async def test_the_event_row_commits_or_rolls_back_with_the_caller(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    async with sessions() as session:
        rolled_back = await add_to_outbox(session, payment(), producer="payments")
        await session.rollback()
    async with sessions() as session, session.begin():
        committed = await add_to_outbox(session, payment(), producer="payments")

    assert await rows(engine, rolled_back.id) == []
    [(topic, published_at)] = await rows(engine, committed.id)
    assert topic == "payments.payment_succeeded"
    assert published_at is None


async def test_a_crash_between_commit_and_publish_loses_nothing(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    bus: RedisBus,
    relays: Callable[..., OutboxRelay],
) -> None:
    # The process that committed died before any relay ran: only the row exists.
    async with sessions() as session, session.begin():
        committed = await add_to_outbox(session, payment(7))
    got = await listen(bus, "payments.payment_succeeded")
    assert [e.id for e in got] == []

    relays()  # a new process's relay

    await eventually(lambda: committed.id in [e.id for e in got])
    [env] = [e for e in got if e.id == committed.id]
    assert env.producer == "payments"  # filled in by the relay
    assert PaymentSucceeded.from_envelope(env) == payment(7)
    await eventually_published(engine, committed.id)


async def eventually_published(engine: AsyncEngine, event_id: str) -> None:
    async def published() -> bool:
        return (await rows(engine, event_id))[0][1] is not None

    await eventually(published)


async def test_rows_carrying_a_secret_are_deleted_when_published_and_others_after_retention(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    bus: RedisBus,
    relays: Callable[..., OutboxRelay],
) -> None:
    reset = PasswordResetRequested(
        user_id=str(uuid.uuid4()),
        email="a@example.com",
        token="sealed-token-" + uuid.uuid4().hex,
        expires_at=datetime.now(UTC),
    )
    got = await listen(bus, "auth.password_reset_requested")
    async with sessions() as session, session.begin():
        secret = await add_to_outbox(session, reset, producer="auth")
        kept = await add_to_outbox(session, payment(11))
    assert len(await rows(engine, secret.id)) == 1  # written with the change, as any event

    relay = relays(retention=timedelta(seconds=3600))

    await eventually(lambda: secret.id in [e.id for e in got])
    assert PasswordResetRequested.from_envelope(next(e for e in got if e.id == secret.id)) == reset
    await eventually_published(engine, kept.id)
    assert await rows(engine, secret.id) == [], "the sealed token outlived its relay"
    async with engine.connect() as conn:
        found = await conn.scalar(
            text("SELECT count(*) FROM outbox WHERE payload::text LIKE :t"),
            {"t": f"%{reset.token}%"},
        )
    assert found == 0

    # The bounded retention sweep: published rows older than the retention go too.
    assert await relay.purge() == 0
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE outbox SET published_at = now() - interval '2 hours' "
                "WHERE payload->>'id' = :id"
            ),
            {"id": kept.id},
        )
    assert await relay.purge() == 1
    assert await rows(engine, kept.id) == []


class _DiesAfterPublishing:
    """A bus through which the relay publishes, then fails as if killed before marking."""

    def __init__(self, bus: RedisBus, delivered: list[Envelope]) -> None:
        self.bus = bus
        self.delivered = delivered
        self.died = False

    async def publish_many(self, events: Sequence[Envelope]) -> list[Envelope]:
        await self.bus.publish_many(events)
        if not self.died:
            await eventually(lambda: len(self.delivered) == 1)
            self.died = True
            raise ConnectionError("relay killed after publishing")
        return list(events)


async def test_a_relay_dying_after_publish_publishes_again_and_dedupe_absorbs_it(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    bus: RedisBus,
    relays: Callable[..., OutboxRelay],
) -> None:
    topic = f"payments.t{uuid.uuid4().hex[:8]}"
    got = await listen(bus, topic, dedupe=True)
    async with sessions() as session, session.begin():
        sent = await add_to_outbox(session, Envelope(type=topic, producer="payments"))

    flaky = _DiesAfterPublishing(bus, got)
    relay = relays(bus=flaky)

    await eventually_published(engine, sent.id)
    assert flaky.died
    assert relay.alive
    stream_entries = await bus.redis.xlen(f"bus:stream:{topic}")
    assert stream_entries == 2  # at-least-once on the wire...
    await eventually(lambda: _pending_is_empty(bus, topic))
    assert [e.id for e in got] == [sent.id]  # ...once in the handler


async def _unpublished(engine: AsyncEngine, topic: str, *, expect: int) -> bool:
    async with engine.connect() as conn:
        result = await conn.execute(
            text("SELECT count(*) FROM outbox WHERE topic = :t AND published_at IS NULL"),
            {"t": topic},
        )
        return bool(result.scalar_one() == expect)


async def _pending_is_empty(bus: RedisBus, topic: str) -> bool:
    groups = await bus.redis.xinfo_groups(f"bus:stream:{topic}")
    return all(g["pending"] == 0 and g["lag"] == 0 for g in groups)


async def test_a_commit_wakes_the_relay_before_its_poll_interval(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    bus: RedisBus,
    relays: Callable[..., OutboxRelay],
) -> None:
    topic = f"payments.t{uuid.uuid4().hex[:8]}"
    got = await listen(bus, topic)
    relay = relays(poll_interval=3600)
    await eventually(lambda: relay.passes >= 1)  # now asleep until woken or an hour passes

    async with sessions() as session, session.begin():
        sent = await add_to_outbox(session, Envelope(type=topic, producer="payments"))

    await eventually(lambda: [e.id for e in got] == [sent.id])


async def test_a_row_from_another_process_is_found_by_the_next_poll(
    engine: AsyncEngine,
    bus: RedisBus,
    relays: Callable[..., OutboxRelay],
) -> None:
    topic = f"payments.t{uuid.uuid4().hex[:8]}"
    got = await listen(bus, topic)
    relay = relays(poll_interval=0.2)
    await eventually(lambda: relay.passes >= 1)
    sent = Envelope(type=topic, producer="payments")
    # Written without a session of this process: nothing wakes the relay, its poll finds it.
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO outbox (topic, payload) VALUES (:topic, CAST(:payload AS jsonb))"),
            {"topic": topic, "payload": sent.model_dump_json()},
        )

    await eventually(lambda: [e.id for e in got] == [sent.id])
    passes = relay.passes
    await eventually(lambda: relay.passes >= passes + 2)  # idle, it goes on polling


async def test_two_relays_share_the_rows_without_publishing_one_twice(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    bus: RedisBus,
    relays: Callable[..., OutboxRelay],
) -> None:
    topic = f"payments.t{uuid.uuid4().hex[:8]}"
    got = await listen(bus, topic)
    async with sessions() as session, session.begin():
        sent = [
            (await add_to_outbox(session, Envelope(type=topic, producer="p", data={"n": i}))).id
            for i in range(300)
        ]

    relays(batch_size=20)
    relays(batch_size=20)

    await eventually(lambda: len(got) >= 300)
    await eventually(lambda: _unpublished(engine, topic, expect=0))
    # The stream holds every publish, so a row published twice would show here.
    assert await bus.redis.xlen(f"bus:stream:{topic}") == 300
    await eventually(lambda: _pending_is_empty(bus, topic))
    assert sorted(e.id for e in got) == sorted(sent)


async def test_mark_processed_records_an_event_once_per_group_with_the_transaction(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    event_id = str(uuid.uuid4())
    async with sessions() as session:
        assert await mark_processed(session, event_id=event_id, group="receipts")
        await session.rollback()
    async with sessions() as session, session.begin():
        assert await mark_processed(session, event_id=event_id, group="receipts")
        assert await mark_processed(session, event_id=event_id, group="audit")
    async with sessions() as session, session.begin():
        assert not await mark_processed(session, event_id=event_id, group="receipts")


async def test_the_plugin_relays_the_services_outbox(engine: AsyncEngine, redis_url: str) -> None:
    settings = make_settings(
        service=SCHEMA, database_url=str(engine.url.render_as_string(False)), redis_url=redis_url
    )
    settings = settings.model_copy(update={"bus": FAST})
    container = build_container(settings, [OutboxRelayPlugin])
    await container.start()
    try:
        got = await listen(container.resolve(BUS), "payments.payment_succeeded")  # type: ignore[arg-type]
        async with container.resolve(DB_SESSIONS)() as session, session.begin():
            sent = await add_to_outbox(session, payment(3))

        await eventually(lambda: sent.id in [e.id for e in got])
        assert next(e for e in got if e.id == sent.id).producer == SCHEMA
        report = await container.health()
        assert report["outbox_relay"]["healthy"] is True
    finally:
        await container.stop()


async def test_a_bad_relay_setting_fails_the_start_naming_it(
    engine: AsyncEngine, redis_url: str
) -> None:
    settings = make_settings(
        service=SCHEMA,
        database_url=str(engine.url.render_as_string(False)),
        redis_url=redis_url,
        plugins={"outbox_relay": PluginSettings(batch_size=0)},
    )
    container = build_container(settings, [OutboxRelayPlugin])
    with pytest.raises(PluginError, match="KEELSON_PLUGINS__OUTBOX_RELAY__BATCH_SIZE"):
        await container.start()


class _KillsTheRelaysConnectionAfter:
    """A bus that, after its `after`-th batch, has PostgreSQL end the relay's connections:
    the commit that would mark the batch just published fails, as in a database restart."""

    def __init__(self, bus: RedisBus, admin: AsyncEngine, application: str, after: int) -> None:
        self.bus, self.admin, self.application, self.after = bus, admin, application, after
        self.batches = 0

    async def publish_many(self, envelopes: Sequence[Envelope]) -> list[Envelope]:
        await self.bus.publish_many(envelopes)
        self.batches += 1
        if self.batches == self.after:
            async with self.admin.connect() as conn:
                await conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE application_name = :name"
                    ),
                    {"name": self.application},
                )
        return list(envelopes)


async def test_a_failed_commit_republishes_only_the_rows_of_its_batch(
    engine: AsyncEngine,
    test_database_url: str,
    sessions: async_sessionmaker[AsyncSession],
    bus: RedisBus,
) -> None:
    topic = f"payments.t{uuid.uuid4().hex[:8]}"
    got = await listen(bus, topic)
    async with sessions() as session, session.begin():
        sent = [
            (await add_to_outbox(session, Envelope(type=topic, producer="p", data={"n": i}))).id
            for i in range(10)
        ]
    application = f"relay-{uuid.uuid4().hex[:8]}"
    relay_engine = create_async_engine(
        test_database_url,
        connect_args={
            "server_settings": {"search_path": f"{SCHEMA},public", "application_name": application}
        },
    )
    admin = create_async_engine(test_database_url)
    killer = _KillsTheRelaysConnectionAfter(bus, admin, application, after=2)
    relay = OutboxRelay(relay_engine, killer, producer="payments", batch_size=3)  # type: ignore[arg-type]
    relay.start()
    try:
        await eventually(lambda: _unpublished(engine, topic, expect=0), timeout=20)
    finally:
        await relay.stop()
        await relay_engine.dispose()
        await admin.dispose()
    # Batches of three: the first committed its marks and is never sent again; the
    # second (rows 4-6) lost its commit with the connection and is sent again, whole and
    # in order, before the rows after it; consumers absorb those three copies.
    entries = await bus.redis.xrange(f"bus:stream:{topic}")
    published = [Envelope.from_json(fields[b"e"]).id for _, fields in entries]
    assert published == sent[:6] + sent[3:6] + sent[6:]
    await eventually(lambda: len(got) >= 13)
    assert sorted({e.id for e in got}) == sorted(sent)

"""The intake admits only senders holding a key derived from the deployment's master key.

Raw DEALER sockets speak the wire protocol: without CURVE, with a key of their own, and
with a sender's real key while claiming another service's name.
"""

import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import orjson
import pytest
import zmq
import zmq.asyncio
from logs_testkit import TEST_KEYS, count_of, sender_credentials
from test_ingest import ack_of, wire

from keelson.logging import CurveKeyPair, SenderCredentials, intake_server_keys
from keelson_dev.embedded import free_port
from logs_service.ingest import Ingestor, IntakeAuth
from logs_service.settings import IngestSettings
from logs_service.store import LogStore
from logs_service.tail import TailHub


@pytest.fixture
async def curve_ingestor(store: LogStore, service_name: str) -> AsyncIterator[Ingestor]:
    settings = IngestSettings(bind_endpoint=f"tcp://127.0.0.1:{free_port()}")
    ingestor = Ingestor(
        settings, store, TailHub(), curve=IntakeAuth.derive(TEST_KEYS, [service_name])
    )
    await ingestor.start()
    yield ingestor
    await ingestor.stop(grace=5)


def dealer(endpoint: str, credentials: SenderCredentials | None) -> zmq.asyncio.Socket:
    socket = zmq.asyncio.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    if credentials is not None:
        credentials.apply(socket)
    socket.connect(endpoint)
    return socket


async def rows_of(pool: asyncpg.Pool, *, logger: str) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT service, ts, message, attrs FROM logs.records WHERE logger = $1", logger
    )


async def test_senders_without_an_admitted_key_store_nothing(
    curve_ingestor: Ingestor, pool: asyncpg.Pool, service_name: str
) -> None:
    stranger = CurveKeyPair(*zmq.curve_keypair())
    intruders = [
        dealer(curve_ingestor.endpoint, None),  # plain ZMTP, no CURVE at all
        dealer(
            curve_ingestor.endpoint,
            SenderCredentials(stranger, intake_server_keys(TEST_KEYS).public),
        ),
    ]
    honest = dealer(curve_ingestor.endpoint, sender_credentials(service_name))
    try:
        for n, intruder in enumerate(intruders):
            forged = wire(service_name, n, logger="forged", message="forged record")
            await intruder.send_multipart([b"KLOG1", f"forged-{n}".encode(), forged], zmq.NOBLOCK)
        # The honest sender's batch is acknowledged after any forged one would have been.
        await honest.send_multipart([b"KLOG1", b"honest", wire(service_name, 9)])
        assert await ack_of(honest) == [b"ACK", b"honest"]
        for intruder in intruders:
            assert not await intruder.poll(0)
    finally:
        for socket in (*intruders, honest):
            socket.close(0)
    assert await count_of(pool, service_name) == 1
    assert await rows_of(pool, logger="forged") == []


async def test_the_authenticated_sender_is_stored_not_the_claimed_one(
    curve_ingestor: Ingestor, pool: asyncpg.Pool, service_name: str
) -> None:
    logger = f"claims-{uuid.uuid4().hex[:8]}"
    a_day_ahead = time.time() + 86_400
    record = wire(
        "auth",  # claims to be the auth service
        0,
        logger=logger,
        ts=a_day_ahead,
        message="login password=hunter2 from eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
        attrs={"authorization": "Bearer abcdefghijk", "card": "4242 4242 4242 4242"},
    )
    socket = dealer(curve_ingestor.endpoint, sender_credentials(service_name))
    try:
        await socket.send_multipart([b"KLOG1", b"claims", record])
        assert await ack_of(socket) == [b"ACK", b"claims"]
    finally:
        socket.close(0)
    (row,) = await rows_of(pool, logger=logger)
    attrs = orjson.loads(row["attrs"])
    assert row["service"] == service_name
    assert attrs["claimed_service"] == "auth"
    # A timestamp from the future is stored at the intake's bound (5 minutes ahead).
    assert row["ts"].timestamp() <= time.time() + 300
    assert attrs["claimed_ts"] == pytest.approx(a_day_ahead)
    stored = row["message"] + row["attrs"]
    for secret in ("hunter2", "eyJhbGciOiJFUzI1NiJ9", "abcdefghijk", "4242 4242"):
        assert secret not in stored

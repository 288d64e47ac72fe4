"""The ZeroMQ consumer in-process, spoken to by a raw DEALER socket."""

import logging
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import orjson
import pytest
import zmq
import zmq.asyncio
from logs_testkit import count_of

from keelson.logging import WIRE_ACK, WIRE_VERSION
from keelson_dev.testing import counted
from logs_service.ingest import Ingestor
from logs_service.metrics import REJECTED


def wire(service: str, i: int, **changes: object) -> bytes:
    record = {
        "id": uuid.uuid4().hex,
        "ts": time.time(),
        "service": service,
        "level": "INFO",
        "logger": "test",
        "message": f"record {i}",
        "request_id": None,
        "trace_id": None,
        "user_id": None,
        "attrs": {},
    }
    record.update(changes)
    return orjson.dumps(record)


@pytest.fixture
async def dealer(ingestor: Ingestor) -> AsyncIterator[zmq.asyncio.Socket]:
    socket = zmq.asyncio.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(ingestor.endpoint)
    yield socket
    socket.close(0)


async def ack_of(socket: zmq.asyncio.Socket, timeout: float = 10) -> list[bytes]:
    assert await socket.poll(int(timeout * 1000)), "no acknowledgement"
    return await socket.recv_multipart()


async def test_malformed_records_are_dropped_counted_and_logged_once(
    ingestor: Ingestor,
    dealer: zmq.asyncio.Socket,
    pool: asyncpg.Pool,
    service_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="logs_service.ingest")
    before = counted(REJECTED, "invalid")
    lines = [wire(service_name, i) for i in range(3)]
    lines += [b"{not json", wire(service_name, 3, level="LOUD"), wire(service_name, 4, id="x")]
    lines.append(wire(service_name, 5, message="x" * 70_000))
    await dealer.send_multipart([WIRE_VERSION, b"batch-1", b"\n".join(lines)])
    await dealer.send_multipart([b"KLOG9", b"batch-2", wire(service_name, 6)])
    await dealer.send_multipart([b"just one frame"])

    assert await ack_of(dealer) == [WIRE_ACK, b"batch-1"]
    assert await count_of(pool, service_name) == 3
    assert ingestor.rejections.totals == {
        "not_json": 1,
        "invalid": 2,
        "oversized": 1,
        "bad_frames": 2,
    }
    assert counted(REJECTED, "invalid") - before == 2
    warnings = [r for r in caplog.records if "dropped log records" in r.getMessage()]
    assert len(warnings) == 1  # once per interval, not once per record

    # The consumer is still there.
    await dealer.send_multipart([WIRE_VERSION, b"batch-3", wire(service_name, 7)])
    assert await ack_of(dealer) == [WIRE_ACK, b"batch-3"]
    assert await count_of(pool, service_name) == 4


async def test_batches_sent_again_are_acknowledged_and_stored_once(
    ingestor: Ingestor, dealer: zmq.asyncio.Socket, pool: asyncpg.Pool, service_name: str
) -> None:
    payload = b"\n".join(wire(service_name, i) for i in range(5))
    await dealer.send_multipart([WIRE_VERSION, b"dup", payload])
    assert await ack_of(dealer) == [WIRE_ACK, b"dup"]
    await dealer.send_multipart([WIRE_VERSION, b"dup", payload])
    assert await ack_of(dealer) == [WIRE_ACK, b"dup"]
    # The same records under another batch id (a spill file read back after a crash).
    await dealer.send_multipart([WIRE_VERSION, b"dup-again", payload + b"\n" + payload])
    assert await ack_of(dealer) == [WIRE_ACK, b"dup-again"]
    assert await count_of(pool, service_name) == 5

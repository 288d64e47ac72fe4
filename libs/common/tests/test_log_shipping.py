"""The ZeroMQ log shipper against a real ROUTER that acknowledges after its 'commit'."""

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import zmq

from keelson.logging import WIRE_ACK, WIRE_VERSION, LogShipper, _shipper
from keelson.logging._spill import SpillStore
from keelson.metrics import LOG_RECORDS_DROPPED
from keelson_dev.embedded import free_port
from keelson_dev.testing import counted


class Receiver:
    """The log service's side of the wire protocol, storing records in memory.

    `withhold_acks` simulates a receiver that dies between its commit and its ack.
    """

    def __init__(self, port: int) -> None:
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.records: dict[str, dict[str, Any]] = {}
        self.deliveries = 0
        self.withhold_acks = False
        self.withheld = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "Receiver":
        self._thread.start()
        assert self._ready.wait(5)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def messages(self) -> set[str]:
        return {record["message"] for record in list(self.records.values())}

    def _run(self) -> None:
        context = zmq.Context()
        socket = context.socket(zmq.ROUTER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.bind(self.endpoint)
        self._ready.set()
        try:
            while not self._stop.is_set():
                if not socket.poll(20):
                    continue
                identity, version, batch_id, payload = socket.recv_multipart()
                assert version == WIRE_VERSION
                lines = payload.split(b"\n")
                for line in lines:
                    record = orjson.loads(line)
                    self.records[record["id"]] = record
                self.deliveries += len(lines)
                if self.withhold_acks:
                    self.withheld += 1
                else:
                    socket.send_multipart([identity, WIRE_ACK, batch_id])
        finally:
            socket.close(0)
            context.term()


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def make_shipper(tmp_path: Path) -> Iterator[Callable[..., tuple[logging.Logger, LogShipper]]]:
    made: list[LogShipper] = []

    def make(port: int, **options: Any) -> tuple[logging.Logger, LogShipper]:
        options.setdefault("spill_dir", tmp_path / "spill")
        options.setdefault("ack_timeout", 0.3)
        options.setdefault("close_timeout", 2.0)
        shipper = LogShipper(f"tcp://127.0.0.1:{port}", service="svc", **options)
        logger = logging.getLogger(f"test.shipping.{len(made)}.{port}")
        logger.handlers = [shipper]
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        made.append(shipper)
        return logger, shipper

    yield make
    for shipper in made:
        shipper.close()


def test_records_arrive_with_their_context_and_are_acknowledged(port: int, make_shipper) -> None:
    receiver = Receiver(port).start()
    logger, shipper = make_shipper(port)
    try:
        for i in range(1200):
            logger.info("event %d", i, extra={"request_id": f"r{i}", "password": "x"})
        wait_for(lambda: len(receiver.records) == 1200)
        assert shipper.drain(5)
        record = next(r for r in receiver.records.values() if r["message"] == "event 7")
        assert record["service"] == "svc" and record["request_id"] == "r7"
        assert record["attrs"] == {"password": "[REDACTED]"}
        stats = shipper.stats()
        assert stats.acknowledged == 1200 and stats.in_flight == 0 and stats.spilled == 0
    finally:
        receiver.stop()


def test_logging_with_nobody_listening_never_blocks_or_raises(port: int, make_shipper) -> None:
    """Nobody listens and the shipper's thread is stuck: every call still returns at once."""
    logger, shipper = make_shipper(port, buffer_size=1000, spill_max_bytes=200_000)
    stalled, release = threading.Event(), threading.Event()

    def stall(socket: object, now: float) -> None:
        stalled.set()
        release.wait(30)

    shipper._sender._fill_window = stall
    wait_for(stalled.is_set, timeout=5)
    slowest = 0.0
    try:
        for i in range(10_000):
            started = time.perf_counter()
            logger.info("nobody listens %d", i, extra={"payload": {"n": i}})
            slowest = max(slowest, time.perf_counter() - started)
        # With the thread stuck nothing left memory but through the caller: exactly the
        # buffer, then the spill limit, then drops; every record is accounted for.
        stats = shipper.stats()
        assert stats.buffered == 1000 and stats.in_flight == 0
        assert 0 < stats.spill_bytes <= 200_000 and stats.spilled > 0
        assert stats.buffered + stats.spilled + stats.dropped["spill_full"] == 10_000
        assert set(stats.dropped) == {"spill_full"}
    finally:
        release.set()
    # Far above a real call (microseconds); only a call that waited on something would fail.
    print(f"slowest logger.info: {slowest * 1000:.2f} ms")
    assert slowest < 1.0


def test_drops_beyond_the_spill_limit_are_counted(port: int, make_shipper) -> None:
    before = counted(LOG_RECORDS_DROPPED, "spill_full")
    logger, shipper = make_shipper(port, buffer_size=10, spill_max_bytes=5_000, batch_size=5)
    for i in range(1000):
        logger.warning("overflow %d", i)
    stats = shipper.stats()
    assert 0 < stats.spill_bytes <= 5_000
    assert stats.dropped["spill_full"] > 900
    assert counted(LOG_RECORDS_DROPPED, "spill_full") - before == stats.dropped["spill_full"]


def test_an_unencodable_record_is_counted_and_its_batch_still_ships(
    port: int, make_shipper
) -> None:
    receiver = Receiver(port).start()
    logger, shipper = make_shipper(port)
    try:
        logger.info("before")
        logger.info("too big for JSON", extra={"n": 2**70})
        logger.info("after")
        wait_for(lambda: len(receiver.records) == 2)
        assert shipper.drain(5)
        assert receiver.messages() == {"before", "after"}
        assert shipper.stats().dropped == {"unencodable": 1}
    finally:
        receiver.stop()


def test_drain_does_not_report_idle_while_a_batch_is_between_buffer_and_pending(
    port: int, make_shipper, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sender takes lines from the buffer, then pends them: drain must not look between."""
    taken, release = threading.Event(), threading.Event()
    take = _shipper._Sender._next_lines

    def held_take(sender: Any) -> Any:
        lines = take(sender)
        if lines is not None and not release.is_set():
            taken.set()
            release.wait(10)
        return lines

    monkeypatch.setattr(_shipper._Sender, "_next_lines", held_take)
    receiver = Receiver(port).start()
    logger, shipper = make_shipper(port)
    try:
        logger.info("in between")
        assert taken.wait(5)
        answers: list[tuple[bool, bool]] = []  # (drained, while still held)
        drainer = threading.Thread(
            target=lambda: answers.append((shipper.drain(0.3), not release.is_set()))
        )
        drainer.start()
        drainer.join(1.0)  # long enough for an early answer to arrive
        release.set()
        drainer.join(5)
        assert answers and answers[0] != (True, True)
        assert shipper.drain(5)
        assert receiver.messages() == {"in between"}
    finally:
        release.set()
        receiver.stop()


def test_the_shippers_own_records_are_not_shipped(port: int, make_shipper) -> None:
    receiver = Receiver(port).start()
    logger, shipper = make_shipper(port)
    try:
        own = logging.getLogger("keelson.logging.shipper")
        shipper.handle(own.makeRecord(own.name, logging.ERROR, __file__, 1, "own", None, None))
        logger.info("ordinary")
        wait_for(lambda: len(receiver.records) == 1)
        assert shipper.drain(5)
        assert receiver.messages() == {"ordinary"}
    finally:
        receiver.stop()


def test_records_spilled_by_a_closed_shipper_are_sent_by_the_next(
    port: int, make_shipper, tmp_path: Path
) -> None:
    logger, first = make_shipper(port, buffer_size=20)
    for i in range(300):
        logger.info("before restart %d", i)
    first.close()
    logger.info("after close")  # e.g. during interpreter shutdown: written straight to disk
    assert first.stats().spilled == 301
    assert list((tmp_path / "spill").glob("*.jsonl"))

    receiver = Receiver(port).start()
    try:
        _, second = make_shipper(port)
        wait_for(lambda: len(receiver.records) == 301)
        assert second.drain(5)
        expected = {f"before restart {i}" for i in range(300)} | {"after close"}
        assert receiver.messages() == expected
        assert not list((tmp_path / "spill").glob("*.jsonl"))
    finally:
        receiver.stop()


def test_a_forked_child_ships_its_own_records(port: int, make_shipper) -> None:
    receiver = Receiver(port).start()
    logger, shipper = make_shipper(port)
    try:
        logger.info("parent before fork")
        wait_for(lambda: len(receiver.records) == 1)
        pid = os.fork()
        if pid == 0:  # child: the parent's thread and socket do not exist here
            logger.info("from child %d", os.getpid())
            os._exit(0 if shipper.drain(10) else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        logger.info("parent after fork")
        wait_for(lambda: len(receiver.records) == 3)
        assert receiver.messages() == {
            "parent before fork",
            f"from child {pid}",
            "parent after fork",
        }
    finally:
        receiver.stop()


_SERVICE = """
import json, logging, sys
from pathlib import Path
from keelson.config import Environment, KeelsonSettings, LogSettings
from keelson.logging import LogShipper, configure_logging

endpoint, spill_dir = sys.argv[1], Path(sys.argv[2])
log = LogSettings(ship_endpoint=endpoint, buffer_size=200, batch_size=100, spill_dir=spill_dir,
                  ack_timeout_seconds=0.3, ship_curve=False)  # the test's receiver is plain
configure_logging(KeelsonSettings(env=Environment.TEST, service="svc-under-test", log=log))
logger = logging.getLogger("service.work")
shipper = next(h for h in logging.getLogger().handlers if isinstance(h, LogShipper))

def phase(name):
    print(name, flush=True)
    return sys.stdin.readline().strip()

for i in range(2000):
    logger.info("line %d", i)
phase("phase1")
for i in range(2000, 10000):
    logger.info("line %d", i)
phase("logged")
shipper.close()
stats = shipper.stats()
print(json.dumps({"spilled": stats.spilled, "dropped": stats.dropped,
                  "resent": stats.resent_batches}), flush=True)
"""


def test_a_receiver_that_goes_away_gets_every_line_once_it_is_back(
    port: int, tmp_path: Path
) -> None:
    """The done-when test: 10,000 lines from a real process, through a receiver outage."""
    spill_dir = tmp_path / "spill"
    receiver = Receiver(port).start()
    service = subprocess.Popen(
        [sys.executable, "-c", _SERVICE, receiver.endpoint, str(spill_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "service.log").open("wb"),
        text=True,
    )
    assert service.stdin is not None and service.stdout is not None
    try:
        assert service.stdout.readline().strip() == "phase1"
        wait_for(lambda: len(receiver.records) > 0)
        # The receiver commits what arrives next but dies before acknowledging it.
        receiver.withhold_acks = True
        wait_for(lambda: receiver.withheld > 0 or len(receiver.records) == 2000)
        receiver.stop()
        first_run = dict(receiver.records)

        service.stdin.write("go\n")
        service.stdin.flush()
        assert service.stdout.readline().strip() == "logged"
        assert list(spill_dir.glob("*.jsonl")), "a 200-record buffer must have spilled"

        receiver = Receiver(port)
        receiver.records.update(first_run)
        receiver.deliveries = len(first_run)
        receiver.start()
        wait_for(lambda: len(receiver.records) == 10_000, timeout=60)
        service.stdin.write("exit\n")
        service.stdin.flush()
        stats = json.loads(service.stdout.readline())
        assert service.wait(15) == 0
    finally:
        receiver.stop()
        if service.poll() is None:
            service.kill()

    assert receiver.messages() == {f"line {i}" for i in range(10_000)}
    assert {r["service"] for r in receiver.records.values()} == {"svc-under-test"}
    print(
        f"unique={len(receiver.records)} delivered (at-least-once)={receiver.deliveries} "
        f"spilled={stats['spilled']} resent_batches={stats['resent']}"
    )
    assert receiver.deliveries >= len(receiver.records)
    assert stats["spilled"] > 0 and stats["dropped"] == {}
    assert not list(spill_dir.glob("*.jsonl"))


def test_spilled_lines_on_their_way_to_disk_still_count_as_held(tmp_path: Path) -> None:
    """Between leaving the in-memory chunk and landing in a segment, lines are still held:
    a drain that looked then would report everything delivered."""
    store = SpillStore(tmp_path, max_bytes=1_000_000, prefix="t")
    store.write([b'{"line":1}'])
    entered, release = threading.Event(), threading.Event()
    open_segment = store._open_segment

    def held_open() -> Any:
        entered.set()
        release.wait(10)
        return open_segment()

    store._open_segment = held_open  # type: ignore[method-assign]
    writer = threading.Thread(target=store.write_pending)
    writer.start()
    try:
        assert entered.wait(5)
        assert store.has_data()  # in neither the chunk nor a segment right now
    finally:
        release.set()
        writer.join(5)
    assert store.has_data() and store.size > 0
    store.close()


def test_a_store_adopts_only_its_own_services_orphaned_segments(tmp_path: Path) -> None:
    """Services share the spill folder under `keelson up`, and the intake stamps records
    with the sending service: auth's spilled records sent by payments were stored as
    payments' (seen in the fault suite). Each service now adopts only its own."""
    auth = SpillStore(tmp_path, max_bytes=1_000_000, prefix="auth")
    auth.write([b'{"service": "auth"}'])
    auth.write_pending()
    auth.close()  # released: an orphan for the next auth process
    payments = SpillStore(tmp_path, max_bytes=1_000_000, prefix="payments")
    assert payments.adopt_orphans() == 0
    assert not payments.has_data()
    successor = SpillStore(tmp_path, max_bytes=1_000_000, prefix="auth")
    assert successor.adopt_orphans() == 1
    assert successor.has_data()
    successor.close()

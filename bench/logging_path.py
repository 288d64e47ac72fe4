"""CPU per `logger.info` call on keelson.logging's hot path (record, redaction, JSON, shipper).

    .venv/bin/python bench/logging_path.py [--calls 20000] [--repeat 5]

Each case logs `--calls` records `--repeat` times inside a bound request context and reports:
- caller us/call: CPU of the calling thread per call (`time.thread_time`), the best of the
  repeats: what a request handler pays;
- process us/record (shipper cases): CPU of the whole process per record, calling thread
  plus the shipper thread's JSON encoding and sends, until every record is acknowledged by
  a receiver in another process (which acknowledges at once and is not counted).

On an event loop (the last two cases), the calls run in a coroutine that yields to the loop
every 8 records, as a loop ending several requests a tick would: the console handler then
writes once a tick; the loop's own cost is in the caller's time.

Cases: a handler that does nothing (the cost of `logging` itself), the JSON console
formatter writing to /dev/null, the ZeroMQ shipper, each without and with `extra=` fields,
and a gateway access record (seven extras, JSON console and shipper), through `logger.log`
as the gateway used to log it and through `log_access_record` as it does now.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryDirectory

import zmq

from keelson.logging import (
    WIRE_ACK,
    ConsoleHandler,
    JsonFormatter,
    LogShipper,
    bind,
    log_access_record,
)
from keelson_dev.embedded import free_port

Call = Callable[[logging.Logger, int], None]


def run_receiver(endpoint: str) -> None:
    """A ROUTER that acknowledges every batch at once (the log service without Postgres)."""
    context = zmq.Context()
    socket = context.socket(zmq.ROUTER)
    socket.bind(endpoint)
    print("ready", flush=True)
    while True:
        identity, _, batch_id, _ = socket.recv_multipart()
        socket.send_multipart([identity, WIRE_ACK, batch_id])


def plain(logger: logging.Logger, i: int) -> None:
    logger.info("order %d shipped to the warehouse", i)


def with_extras(logger: logging.Logger, i: int) -> None:
    logger.info("order %d shipped to the warehouse", i, extra={"order_id": f"ord-{i}", "items": 3})


def access_record(logger: logging.Logger, i: int) -> None:
    """What gateway.plugins.access_log logs per request."""
    logger.log(
        logging.INFO,
        "%s %s %d %.1fms",
        "GET",
        "/api/orders/{order_id}",
        200,
        1.234,
        extra={
            "method": "GET",
            "route": "/api/orders/{order_id}",
            "status": 200,
            "duration_ms": 1.234,
            "client_ip": "10.0.0.7",
            "request_id": f"req-{i}",
            "user_id": "6f1c0b7e-1d2a-4c55-9a51-0b1f0d3c2e11",
        },
    )


def access_record_fields(logger: logging.Logger, i: int) -> None:
    """The same record through `keelson.logging.log_access_record`."""
    log_access_record(
        logger,
        logging.INFO,
        "GET",
        "/api/orders/{order_id}",
        200,
        0.001234,
        "10.0.0.7",
        request_id=f"req-{i}",
        user_id="6f1c0b7e-1d2a-4c55-9a51-0b1f0d3c2e11",
    )


def json_console() -> logging.Handler:
    handler = ConsoleHandler(open(os.devnull, "w"))  # noqa: SIM115
    handler.setFormatter(JsonFormatter("bench"))
    return handler


def run_calls(logger: logging.Logger, call: Call, calls: int, on_loop: bool) -> None:
    if not on_loop:
        for i in range(calls):
            call(logger, i)
        return

    async def ticks() -> None:
        for i in range(calls):
            call(logger, i)
            if i % 8 == 7:
                await asyncio.sleep(0)

    asyncio.run(ticks())


def measure(
    name: str,
    handlers: list[logging.Handler],
    call: Call,
    calls: int,
    repeat: int,
    on_loop: bool = False,
) -> tuple[float, float | None]:
    logger = logging.getLogger(f"bench.path.{name}")
    logger.handlers, logger.propagate = handlers, False
    logger.setLevel(logging.INFO)
    shippers = [h for h in handlers if isinstance(h, LogShipper)]
    caller: list[float] = []
    process: list[float] = []
    with bind(request_id="req-bench", trace_id="t" * 32, user_id="user-1"):
        for i in range(200):
            call(logger, i)
        for shipper in shippers:
            shipper.drain(30)
        for _ in range(repeat):
            cpu, thread = time.process_time(), time.thread_time()
            run_calls(logger, call, calls, on_loop)
            caller.append((time.thread_time() - thread) / calls * 1e6)
            for shipper in shippers:
                if not shipper.drain(60):
                    raise RuntimeError("the receiver did not acknowledge everything")
            process.append((time.process_time() - cpu) / calls * 1e6)
    for shipper in shippers:
        stats = shipper.stats()
        if stats.spilled or stats.dropped:
            raise RuntimeError(f"{name}: the shipper spilled or dropped records: {stats}")
        shipper.close()
    return min(caller), (min(process) if shippers else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--receiver", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        run_receiver(args.receiver)
        return
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    receiver = subprocess.Popen(
        [sys.executable, __file__, "--receiver", endpoint], stdout=subprocess.PIPE, text=True
    )
    assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
    try:
        with TemporaryDirectory(prefix="keelson-bench-path-") as spill:

            def shipper() -> LogShipper:
                return LogShipper(
                    endpoint, service="bench", spill_dir=Path(spill), buffer_size=args.calls + 1000
                )

            cases: list[tuple[str, Callable[[], list[logging.Handler]], Call, bool]] = [
                ("no-op handler, no extras", lambda: [logging.NullHandler()], plain, False),
                ("JSON console, no extras", lambda: [json_console()], plain, False),
                ("JSON console, 2 extras", lambda: [json_console()], with_extras, False),
                ("shipper, no extras", lambda: [shipper()], plain, False),
                ("shipper, 2 extras", lambda: [shipper()], with_extras, False),
                (
                    "gateway access record, logger.log (JSON console + shipper)",
                    lambda: [json_console(), shipper()],
                    access_record,
                    False,
                ),
                (
                    "gateway access record, log_access_record (JSON console + shipper)",
                    lambda: [json_console(), shipper()],
                    access_record_fields,
                    False,
                ),
                (
                    "same, logger.log, on an event loop",
                    lambda: [json_console(), shipper()],
                    access_record,
                    True,
                ),
                (
                    "same, log_access_record, on an event loop",
                    lambda: [json_console(), shipper()],
                    access_record_fields,
                    True,
                ),
            ]
            print(f"{args.calls:,} calls x {args.repeat}, best run")
            print("| case | caller us/call | process us/record |")
            print("| --- | ---: | ---: |")
            for n, (name, make, call, on_loop) in enumerate(cases):
                caller, process = measure(f"{n}", make(), call, args.calls, args.repeat, on_loop)
                shown = f"{process:.1f}" if process is not None else ""
                print(f"| {name} | {caller:.1f} | {shown} |", flush=True)
    finally:
        receiver.kill()
        receiver.wait()


if __name__ == "__main__":
    main()

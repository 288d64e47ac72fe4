"""A service process that ships `count` records, then waits until all are acknowledged.

Usage: python log_sender.py ENDPOINT SERVICE COUNT SPILL_DIR [BUFFER_SIZE [RATE]]
RATE paces the burst at that many records per second (0: as fast as it can).
Prints `sent` once everything is logged, then one JSON line of shipper stats.
"""

import json
import logging
import sys
import time
from pathlib import Path

from keelson.config import KeelsonSettings
from keelson.keys import KeyManager
from keelson.logging import LogShipper, SenderCredentials, bind

endpoint, service, count, spill_dir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
buffer_size = int(sys.argv[5]) if len(sys.argv) > 5 else 10_000
rate = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
shipper = LogShipper(
    endpoint,
    service=service,
    buffer_size=buffer_size,
    spill_dir=Path(spill_dir),
    ack_timeout=0.5,
    close_timeout=10,
    credentials=SenderCredentials.derive(KeyManager.from_settings(KeelsonSettings()), service),
)
logger = logging.getLogger(f"{service}.work")
logger.handlers = [shipper]
logger.propagate = False
logger.setLevel(logging.DEBUG)
levels = (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)
started = time.monotonic()
for i in range(count):
    if rate and i % 100 == 0:
        time.sleep(max(0.0, started + i / rate - time.monotonic()))
    with bind(request_id=f"{service}-req-{i % 10}", user_id=f"user-{i % 7}"):
        logger.log(levels[i % 4], "%s record %d of the burst", service, i, extra={"n": i})
print("sent", flush=True)
drained = shipper.drain(180)
shipper.close()
stats = shipper.stats()
print(
    json.dumps(
        {
            "drained": drained,
            "acknowledged": stats.acknowledged,
            "spilled": stats.spilled,
            "dropped": stats.dropped,
            "resent_batches": stats.resent_batches,
        }
    ),
    flush=True,
)

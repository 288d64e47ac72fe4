"""A service stopped with SIGTERM keeps the log records it could not deliver yet.

uvicorn re-raises SIGTERM once it has shut down, so the process ends by the signal and no
interpreter-exit cleanup runs: the app's lifespan must close the shipper, which spills
what the log service has not acknowledged.
"""

import json
import signal
from pathlib import Path

from keelson_dev.embedded import free_port
from keelson_dev.testing import ServiceProcess


async def test_sigterm_spills_records_the_log_service_never_received(tmp_path: Path) -> None:
    nobody = f"tcp://127.0.0.1:{free_port()}"  # no log service: every record stays buffered
    gateway = ServiceProcess("gateway", tmp_path, {"KEELSON_LOG__SHIP_ENDPOINT": nobody})
    try:
        await gateway.wait_for("/health/live")
        gateway.process.send_signal(signal.SIGTERM)
        gateway.process.wait(30)
    finally:
        gateway.stop()
    spilled = [
        json.loads(line)
        for segment in sorted((tmp_path / "spill-gateway").glob("*.jsonl"))
        for line in segment.read_text().splitlines()
        if line.strip()
    ]
    messages = [record["message"] for record in spilled]
    assert any("ready on port" in message for message in messages), messages
    assert all(record["service"] == "gateway" for record in spilled)

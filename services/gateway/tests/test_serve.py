"""`python -m gateway` on granian: a main process and its worker, which serves."""

import json
import signal
import socket
from pathlib import Path

import httpx
import psutil
from gateway_testkit import GatewayProcess, private_bus, upstreams_config, write_config

from keelson_dev.embedded import free_port
from keelson_dev.testing import eventually


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def test_a_sigkilled_main_process_takes_its_worker_with_it(tmp_path: Path) -> None:
    """Sent: SIGKILL to granian's main process (the pid supervisor knows). Holds: its
    worker, which holds the listening socket and served until then, stops too (it used to
    serve on, re-parented, so the gateway's outage was none and the next gateway could
    not bind), gracefully: it spills the log records the log service never received, and
    the port is free for the next gateway."""
    config = {"bus": private_bus(), "plugins": {"routing": upstreams_config()}}
    write_config(tmp_path, config)
    nobody = f"tcp://127.0.0.1:{free_port()}"  # no log service: records stay to be spilled
    spill = tmp_path / "spill"
    env = {
        "KEELSON_DRAIN_PAUSE_SECONDS": "2",  # keelson up's: an orphan does not wait it out
        "KEELSON_LOG__SHIP_ENDPOINT": nobody,
        "KEELSON_LOG__SPILL_DIR": str(spill),
    }
    gateway = GatewayProcess(tmp_path, env=env).start()
    assert gateway.process is not None
    workers = psutil.Process(gateway.process.pid).children()
    assert len(workers) == 1
    worker = workers[0]
    try:
        assert httpx.get(gateway.url + "/health/live", timeout=10).status_code == 200
        gateway.process.send_signal(signal.SIGKILL)
        gateway.process.wait(10)

        def worker_gone() -> bool:
            return not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE

        # Bounded, not timed: the old code's orphan never stops; a loaded machine's graceful
        # stop (the log shipper's close and spill) has taken over 10 s.
        await eventually(worker_gone, timeout=30, interval=0.05)
        assert _port_free(gateway.port)
    finally:
        gateway.stop()
        if worker.is_running():
            worker.kill()  # the old code's orphan: not left serving
    spilled = [
        json.loads(line)
        for segment in sorted(spill.glob("*.jsonl"))
        for line in segment.read_text().splitlines()
        if line.strip()
    ]
    messages = [record["message"] for record in spilled]
    assert any("ready on port" in message for message in messages), messages
    assert any("main process" in m and "is gone" in m for m in messages), messages

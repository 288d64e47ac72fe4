"""A service stopped with SIGTERM keeps the log records it could not deliver yet.

uvicorn re-raises SIGTERM once it has shut down, so the process ends by the signal and no
interpreter-exit cleanup runs: the app's lifespan must close the shipper, which spills
what the log service has not acknowledged.
"""

import asyncio
import json
import os
import signal
from pathlib import Path

import httpx

from keelson_dev.embedded import free_port
from keelson_dev.testing import ServiceProcess, eventually


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


_APP = '''
import asyncio
from pathlib import Path

from fastapi import APIRouter

from keelson.auth import PUBLIC
from keelson.config import KeelsonSettings
from keelson.service import create_service_app, startup_settings

router = APIRouter()


@router.get("/slow", openapi_extra=PUBLIC)
async def slow(folder: str) -> dict[str, str]:
    """Answers once the test creates `release` in `folder` (it creates `entered` first)."""
    (Path(folder) / "entered").touch()
    while not (Path(folder) / "release").exists():
        await asyncio.sleep(0.02)
    return {"status": "done"}


def create_app():
    return create_service_app(
        startup_settings(KeelsonSettings), routers=[router], title="slow", database=False
    )
'''

_MAIN = """
from keelson.config import KeelsonSettings
from keelson.service import run_service

run_service("slowservice", KeelsonSettings)
"""


async def test_sigterm_fails_readiness_first_and_finishes_what_is_in_flight(
    tmp_path: Path,
) -> None:
    """Sent: SIGTERM to a real `run_service` process while a request is in flight, with a
    3 s drain pause. Holds: readiness answers 503 at once while the listener still
    accepts (liveness 200), then the listener closes, and the request in flight still
    completes with 200 before the process exits."""
    package = tmp_path / "pkg" / "slowservice"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "app.py").write_text(_APP)
    (package / "__main__.py").write_text(_MAIN)
    pythonpath = os.pathsep.join([str(tmp_path / "pkg"), os.environ.get("PYTHONPATH", "")])
    service = ServiceProcess(
        "slowservice",
        tmp_path,
        {
            "PYTHONPATH": pythonpath,
            "KEELSON_DRAIN_PAUSE_SECONDS": "3",
            "KEELSON_LOG__SHIP_ENDPOINT": "",
        },
    )
    try:
        await service.wait_for("/health/ready")
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
            slow = asyncio.create_task(client.get("/slow", params={"folder": str(tmp_path)}))
            await eventually(lambda: (tmp_path / "entered").exists())
            service.process.send_signal(signal.SIGTERM)

            async def probe(path: str) -> int | None:
                try:
                    async with httpx.AsyncClient(base_url=service.url, timeout=2) as fresh:
                        return (await fresh.get(path)).status_code
                except httpx.TransportError:
                    return None

            async def not_ready() -> bool:
                return await probe("/health/ready") == 503

            await eventually(not_ready, timeout=2.5)
            assert await probe("/health/live") == 200  # not ready, yet the listener accepts

            async def refused() -> bool:
                return await probe("/health/live") is None

            await eventually(refused, timeout=10)
            assert not slow.done()
            (tmp_path / "release").touch()
            answer = await slow
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"status": "done"}
        assert service.process.wait(15) in (-signal.SIGTERM, 0)
    finally:
        service.stop()

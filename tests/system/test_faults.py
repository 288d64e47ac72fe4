"""The suite under faults, as `make up` runs it: a service SIGKILLed while requests flow.

Runs after `test_abuse.py` on the same suite (its name sorts later); supervisor restarts
each killed service, so the suite is whole again when each case ends.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import httpx
import pytest

from keelson_dev.supervision import ProcessState, Supervisor

from .conftest import RunningSuite

pytestmark = pytest.mark.timeout(600)
# How long the gateway may take to serve an upstream again once that upstream is ready.
RECOVERY_SECONDS = 5.0


def poll(what: str, condition: Callable[[], bool], timeout: float) -> float:
    """Seconds until `condition` held; fails after `timeout`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"{what} not within {timeout}s")
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.mark.parametrize(
    ("victim", "path", "bystander"),
    [
        ("auth", "/.well-known/jwks.json", "/api/v1/logs?limit=1"),
        ("logs", "/api/v1/logs?limit=1", "/.well-known/jwks.json"),
    ],
)
def test_a_killed_service_costs_only_its_own_routes_and_recovers_at_once(
    suite: RunningSuite, victim: str, path: str, bystander: str
) -> None:
    """Sent: SIGKILL to one service, then requests to its route and to another service's
    through the gateway. Holds: its route answers 502/503/504 problem+json and never hangs
    (15 s client timeout), the other route keeps answering 200, and once supervisor has
    the service ready again the gateway serves it within RECOVERY_SECONDS."""
    admin = suite.admin()
    supervisor = Supervisor.from_config(suite.root / ".keelson" / "supervisord.conf")
    before = supervisor.process(victim).pid
    os.kill(before, signal.SIGKILL)
    statuses: list[int] = []
    with suite.client() as client:

        def back() -> bool:
            info = supervisor.process(victim)
            if info.pid in (0, before) or info.state is not ProcessState.RUNNING:
                return False
            try:
                ready = httpx.get(f"{suite.url(victim)}/health/ready", timeout=2)
            except httpx.HTTPError:
                return False
            return ready.status_code == 200

        while not back():
            response = client.get(path, headers=admin)
            statuses.append(response.status_code)
            if response.status_code != 200:
                assert response.status_code in (502, 503, 504), response.text[:300]
                assert response.headers["content-type"] == "application/problem+json"
            assert client.get(bystander, headers=admin).status_code == 200
            assert len(statuses) < 500, "the service did not come back"
            time.sleep(0.25)  # a steady load, under the gateway's 600 requests a minute

        def served() -> bool:
            return client.get(path, headers=admin).status_code == 200

        poll(f"the gateway serving {victim} again", served, RECOVERY_SECONDS)
    assert any(status != 200 for status in statuses), "the kill went unnoticed"

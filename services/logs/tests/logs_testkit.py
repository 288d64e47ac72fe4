"""Helpers for the logs service's tests: sender processes, polling, identities."""

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

from keelson.auth import Principal, identity_key, sign_identity
from keelson.config import KeelsonSettings
from keelson.keys import KeyManager

SENDER = Path(__file__).with_name("log_sender.py")


class SenderProcess:
    """A real process shipping records through keelson.logging's shipper."""

    def __init__(
        self, endpoint: str, service: str, count: int, spill_dir: Path, *, buffer_size: int = 10_000
    ) -> None:
        self.service = service
        self.count = count
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(SENDER),
                endpoint,
                service,
                str(count),
                str(spill_dir),
                str(buffer_size),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def wait_sent(self) -> None:
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "sent"

    def result(self, timeout: float = 120) -> dict[str, Any]:
        assert self.process.stdout is not None
        out, _ = self.process.communicate(timeout=timeout)
        assert self.process.returncode == 0
        lines = [line for line in out.splitlines() if line.startswith("{")]
        return json.loads(lines[-1])

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


async def wait_until(
    condition: Callable[[], Awaitable[bool]], *, timeout: float = 30, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


def operator_headers(settings: KeelsonSettings, *roles: str, user: str = "op-1") -> dict[str, str]:
    """Identity headers as the gateway signs them, for a user holding `roles`."""
    key = identity_key(KeyManager(settings.master_key.get_secret_value()))
    return sign_identity(Principal(user_id=user, roles=frozenset(roles)), key)


async def count_of(pool: asyncpg.Pool, service: str) -> int:
    value: int = await pool.fetchval("SELECT count(*) FROM records WHERE service = $1", service)
    return value


async def distinct_count_of(pool: asyncpg.Pool, service: str) -> int:
    value: int = await pool.fetchval(
        "SELECT count(DISTINCT id) FROM records WHERE service = $1", service
    )
    return value

"""Helpers for the logs service's tests: sender and service processes, row counts, identities."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg

from keelson.auth import Principal, identity_key, sign_identity
from keelson.config import KeelsonSettings
from keelson.keys import KeyManager
from keelson.logging import SenderCredentials
from keelson_dev.embedded import free_port
from keelson_dev.testing import ServiceProcess

SENDER = Path(__file__).with_name("log_sender.py")
# The master key every test process has (none is set in the tests' environment).
TEST_KEYS = KeyManager.from_settings(KeelsonSettings())


def sender_credentials(service: str) -> SenderCredentials:
    """What a shipper named `service` needs to pass the intake's CURVE authentication."""
    return SenderCredentials.derive(TEST_KEYS, service)


class SenderProcess:
    """A real process shipping records through keelson.logging's shipper."""

    def __init__(
        self,
        endpoint: str,
        service: str,
        count: int,
        spill_dir: Path,
        *,
        buffer_size: int = 10_000,
        rate: float = 0,
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
                str(rate),
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


def operator_headers(settings: KeelsonSettings, *roles: str, user: str = "op-1") -> dict[str, str]:
    """Identity headers as the gateway signs them, for a user holding `roles` and the
    scopes auth's default role table grants them (`logs:read` for admin and ops)."""
    key = identity_key(KeyManager(settings.master_key.get_secret_value()))
    scopes = {"logs:read"} if {"admin", "ops"} & set(roles) else {"profile:read"}
    principal = Principal(user_id=user, roles=frozenset(roles), scopes=frozenset(scopes))
    return sign_identity(principal, key)


async def count_of(pool: asyncpg.Pool, service: str) -> int:
    value: int = await pool.fetchval("SELECT count(*) FROM records WHERE service = $1", service)
    return value


async def distinct_count_of(pool: asyncpg.Pool, service: str) -> int:
    value: int = await pool.fetchval(
        "SELECT count(DISTINCT id) FROM records WHERE service = $1", service
    )
    return value


def logs_service_process(
    *, database_url: str, bind_endpoint: str, workdir: Path, senders: list[str]
) -> ServiceProcess:
    """`python -m logs_service` as the suite runs it, shipping no records of its own."""
    return ServiceProcess(
        "logs_service",
        workdir,
        {
            "KEELSON_DATABASE_URL": database_url,
            "KEELSON_LOGS__BIND_ENDPOINT": bind_endpoint,
            "KEELSON_LOGS__SENDERS": json.dumps(senders),
            "KEELSON_LOG__SHIP_ENDPOINT": "",
            "KEELSON_PLUGINS__AUTH__JWKS_URL": f"http://127.0.0.1:{free_port()}/jwks.json",
        },
    )

"""PostgreSQL and Redis (Valkey) restarted, and stopped for 10 s, under load.

The machine's own PostgreSQL and Redis are shared: these cases run the suite `keelson up`
runs without KEELSON_DATABASE_URL/KEELSON_REDIS_URL, on embedded PostgreSQL and Valkey of
its own (own ports, own data folders, supervised as `postgres` and `valkey`), and stop and
start those.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from keelson_dev.embedded import free_port
from keelson_dev.mailsink import read_mailbox

from .conftest import ADMIN_PASSWORD, RunningSuite, launched
from .load import Call, Load, figures, report
from .test_faults import poll

pytestmark = pytest.mark.timeout(900)
OUTAGE_SECONDS = 10.0
PROFILE = Path(__file__).resolve().parents[2] / "loadtests" / "profile"
SERVICES = ("gateway", "auth", "logs", "notifications", "payments")


@pytest.fixture(scope="module")
def embedded() -> Iterator[RunningSuite]:
    # Not under pytest's temporary folder: every pytest session on the machine resets
    # /tmp/pytest-of-<user> to mode 0700, and PostgreSQL, which runs as a user of its own
    # when the tests run as root, could then no longer reach its data folder to restart.
    root = Path(tempfile.mkdtemp(prefix="keelson-outages-"))
    pg_port = free_port()
    # The load-test profile: per-address limits lifted (every request here comes from
    # 127.0.0.1, and sign-ups are 10 a minute per address by default), INFO records kept.
    env = {
        "KEELSON_UP_POSTGRES_PORT": str(pg_port),
        "KEELSON_CONFIG_DIR": str(PROFILE),
        "KEELSON_LOG__LEVEL": "INFO",
    }
    try:
        with launched(root, env, f"postgresql://postgres@127.0.0.1:{pg_port}/keelson") as running:
            yield running
    finally:
        shutil.rmtree(root, ignore_errors=True)


def tail(suite: RunningSuite, lines: int = 80) -> str:
    """The end of the suite's output, for a failure's report (the folder may be gone by
    the time anyone looks)."""
    return "\n".join(suite.output.read_text(errors="replace").splitlines()[-lines:])


def service_pids(suite: RunningSuite) -> dict[str, int]:
    return {name: suite.supervisor.process(name).pid for name in SERVICES}


def outage(suite: RunningSuite, program: str, seconds: float) -> tuple[float, float]:
    """Stop `program`, keep it away `seconds` (the fault's length, not a wait for
    anything), start it; returns the monotonic times of the stop and the start."""
    stopped = time.monotonic()
    suite.supervisor.stop(program)
    time.sleep(seconds)
    suite.supervisor.start(program)
    return stopped, time.monotonic()


def accounts(suite: RunningSuite, emails: list[str]) -> set[str]:
    async def query() -> set[str]:
        conn = await asyncpg.connect(suite.database_url, timeout=10)
        try:
            rows = await conn.fetch("SELECT email FROM auth.users WHERE email = ANY($1)", emails)
        finally:
            await conn.close()
        return {row["email"] for row in rows}

    return asyncio.run(query())


class SignUps:
    """Sign-ups through the gateway, each answer remembered by address."""

    def __init__(self) -> None:
        self.answers: dict[str, int | None] = {}

    def __call__(self, client: httpx.Client, headers: dict[str, str]) -> httpx.Response:
        email = f"outage-{uuid.uuid4().hex[:12]}@example.com"
        self.answers[email] = None
        response = client.post(
            "/api/v1/auth/register",
            json={"email": email, "password": ADMIN_PASSWORD},
            headers=headers,
        )
        self.answers[email] = response.status_code
        return response

    def answered(self, status: int) -> list[str]:
        return [email for email, got in self.answers.items() if got == status]


def check_answers(load: Load) -> None:
    for o in load.outcomes:
        assert o.status is not None, o  # the gateway always answers
        assert o.status != 500, o
        if not o.ok and o.status != 401:
            assert o.status in (502, 503, 504) and o.problem, o


@pytest.mark.parametrize("seconds", [0.0, OUTAGE_SECONDS], ids=["restarted", "stopped-10s"])
def test_postgres_outage(embedded: RunningSuite, seconds: float) -> None:
    """Sent: PostgreSQL stopped (fast shutdown) and started again, at once or after 10 s,
    under sign-ups, profile reads and log queries. Holds: every answer is 2xx or 503/502/
    504 problem+json, never 500; the pools recover with no service restarted; every
    sign-up answered 202 has its account, and none answered otherwise has one."""
    suite = embedded
    _, bearer = suite.new_user()
    pids = service_pids(suite)
    sign_ups = SignUps()
    calls: dict[str, Call] = {
        "sign-up": sign_ups,
        "me": lambda c, h: c.get("/api/v1/auth/me", headers={**bearer, **h}),
        "logs": lambda c, h: c.get("/api/v1/logs?limit=1", headers={**suite.admin(), **h}),
    }
    with Load(suite.gateway, calls) as load:
        poll("load before the outage", lambda: len(load.outcomes) >= 6, 60)
        stopped, started = outage(suite, "postgres", seconds)
        mark = len(load.outcomes)
        try:
            poll(
                "every kind of request served again",
                lambda: {o.kind for o in load.outcomes[mark:] if o.ok} == set(calls),
                120,
            )
        except BaseException:
            print(tail(suite), [(o.kind, o.status) for o in load.outcomes[-12:]], flush=True)
            raise
    check_answers(load)
    assert service_pids(suite) == pids  # no service restarted
    created = accounts(suite, list(sign_ups.answers))
    accepted = set(sign_ups.answered(202))
    assert accepted <= created, accepted - created  # nothing answered done is missing
    assert created <= accepted, created - accepted  # nothing answered failed committed
    during = figures(load.outcomes, stopped, started)
    report(
        f"PostgreSQL {'restart' if not seconds else 'stopped 10 s'}",
        during=during.row(),
        signups=len(sign_ups.answers),
        accepted=len(accepted),
        committed_but_failed=len(created - accepted),
    )


@pytest.mark.parametrize("seconds", [0.0, OUTAGE_SECONDS], ids=["restarted", "stopped-10s"])
def test_redis_outage(embedded: RunningSuite, seconds: float) -> None:
    """Sent: Valkey stopped and started again, at once or after 10 s, under profile reads
    with a live token and with a token logged out before the outage, and sign-ups. Holds:
    the logged-out token is never accepted; answers are 2xx, 401 (that token) or 503/502/504
    problem+json, never 500; no service restarted; reads with the live token are served
    again once Valkey is back; every sign-up answered 202 gets its verification mail."""
    suite = embedded
    _, bearer = suite.new_user()
    _, revoked = suite.new_user()
    with suite.client() as client:
        assert client.post("/api/v1/auth/logout", headers=revoked).status_code == 204
        assert client.get("/api/v1/auth/me", headers=revoked).status_code == 401
    pids = service_pids(suite)
    sign_ups = SignUps()
    calls: dict[str, Call] = {
        "me": lambda c, h: c.get("/api/v1/auth/me", headers={**bearer, **h}),
        "revoked": lambda c, h: c.get("/api/v1/auth/me", headers={**revoked, **h}),
        "sign-up": sign_ups,
    }
    with Load(suite.gateway, calls) as load:
        poll("load before the outage", lambda: len(load.outcomes) >= 6, 60)
        stopped, started = outage(suite, "valkey", seconds)
        mark = len(load.outcomes)
        poll(
            "profile reads served again",
            lambda: any(o.kind == "me" and o.ok for o in load.outcomes[mark:]),
            120,
        )
        poll("more load after recovery", lambda: len(load.outcomes) >= mark + 6, 60)
    check_answers(load)
    assert not [o for o in load.outcomes if o.kind == "revoked" and o.ok]
    assert service_pids(suite) == pids
    accepted = sign_ups.answered(202)

    def mailed() -> set[str]:
        return {e.to for e in read_mailbox(suite.mail_dir, limit=100_000)} & set(accepted)

    poll("a verification mail for every accepted sign-up", lambda: mailed() == set(accepted), 90)
    during = figures(load.outcomes, stopped, started)
    report(
        f"Redis {'restart' if not seconds else 'stopped 10 s'}",
        during=during.row(),
        revoked_accepted=0,
        signups_accepted=len(accepted),
        mails_missing=0,
    )

"""The suite under faults, as `make up` runs it: a service SIGKILLed while requests flow.

Runs after `test_abuse.py` on the same suite (its name sorts later); supervisor restarts
each killed service, so the suite is whole again when each case ends.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest

from keelson_dev.embedded import free_port
from keelson_dev.mailsink import read_mailbox
from keelson_dev.suite import DRAIN_PAUSE_SECONDS, SERVICES, Layout
from keelson_dev.supervision import ProcessState, Supervisor, pid_alive
from keelson_dev.testing import ServiceProcess

from .conftest import ADMIN_PASSWORD, RunningSuite
from .load import Call, Load, Outcome, access_records, figures, report

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
        ("notifications", "/api/v1/notifications/preferences", "/.well-known/jwks.json"),
        ("payments", "/api/v1/payments/intents?limit=1", "/.well-known/jwks.json"),
    ],
)
def test_a_killed_service_costs_only_its_own_routes_and_recovers_at_once(
    suite: RunningSuite, victim: str, path: str, bystander: str
) -> None:
    """Sent: SIGKILL to one service, then requests to its route and to another service's
    through the gateway. Holds: its route answers 503 problem+json with Retry-After (the
    upstream is unavailable, whether its connection is refused or its circuit is open;
    never 502) and never hangs (15 s client timeout), the other route keeps answering
    200, and once supervisor has the service ready again the gateway serves it within
    RECOVERY_SECONDS."""
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
                assert response.status_code == 503, response.text[:300]
                assert response.headers["content-type"] == "application/problem+json"
                assert int(response.headers["retry-after"]) >= 1
            assert client.get(bystander, headers=admin).status_code == 200
            assert len(statuses) < 500, "the service did not come back"
            time.sleep(0.25)  # a steady load, under the gateway's 600 requests a minute

        def served() -> bool:
            return client.get(path, headers=admin).status_code == 200

        recovery = poll(f"the gateway serving {victim} again", served, RECOVERY_SECONDS)
    assert any(status != 200 for status in statuses), "the kill went unnoticed"
    report(
        f"SIGKILL {victim}",
        requests=len(statuses),
        by_status=dict(sorted(Counter(statuses).items())),
        recovery=f"{recovery:.1f}s",
    )


# One route per service through the gateway: the steady background load of the cases below.
ROUTES = {
    "auth": "/.well-known/jwks.json",
    "logs": "/api/v1/logs?limit=1",
    "notifications": "/api/v1/notifications/preferences",
    "payments": "/api/v1/payments/intents?limit=1",
}
# How long a case waits for the log store to hold every access record it expects.
RECORDS_SECONDS = 60.0


def background(suite: RunningSuite) -> Load:
    admin = suite.admin()

    def get(path: str) -> Call:
        return lambda client, headers: client.get(path, headers={**admin, **headers})

    return Load(suite.gateway, {name: get(path) for name, path in ROUTES.items()})


def restarted(suite: RunningSuite, name: str, before: int) -> Callable[[], bool]:
    """Whether supervisor runs `name` again under a new pid, and it answers ready."""

    def check() -> bool:
        info = suite.supervisor.process(name)
        if info.pid in (0, before) or info.state is not ProcessState.RUNNING:
            return False
        try:
            return httpx.get(f"{suite.url(name)}/health/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    return check


def records_complete(
    suite: RunningSuite, outcomes: list[Outcome], upstream_of: dict[str, str]
) -> tuple[int, int]:
    """Waits until every answered request has its gateway access record, and every 2xx one
    its upstream's too; returns (lost, duplicated) at the end of the wait."""
    answered = [o for o in outcomes if o.status is not None]
    expected = {
        o.request_id: {"gateway"} | ({upstream_of[o.kind]} if o.ok else set()) for o in answered
    }
    found: dict[str, Counter[str]] = {}

    def missing() -> int:
        nonlocal found
        found = access_records(suite.database_url, expected)
        return sum(1 for i, want in expected.items() for s in want if found[i][s] == 0)

    deadline = time.monotonic() + RECORDS_SECONDS
    while missing() and time.monotonic() < deadline:
        time.sleep(1)
    lost = missing()
    duplicated = sum(max(0, n - 1) for counts in found.values() for n in counts.values())
    if lost or duplicated:
        by_kind = {o.request_id: (o.kind, o.status, round(o.started, 2)) for o in answered}
        for request_id, want in expected.items():
            counts = found[request_id]
            if any(counts[s] != 1 for s in want) or any(n > 1 for n in counts.values()):
                print("RECORDS", request_id, by_kind[request_id], dict(counts), flush=True)
    return lost, duplicated


@pytest.mark.parametrize("victim", ["auth", "logs", "notifications", "payments", "gateway"])
def test_sigterm_under_load_loses_nothing(suite: RunningSuite, victim: str) -> None:
    """Sent: SIGTERM to one service (as supervisor or Kubernetes stops it) under a steady
    load on every service's route, each request with its own id. Holds: the process exits
    within its grace period and supervisor has it back; every answer is 200 or, for the
    victim's route, 502/503/504 problem+json (through the gateway, nothing else fails;
    when the gateway itself stops, no request is cut: only refused connections while it is
    away); every answered request's access records reach the log store, none twice."""
    supervisor = suite.supervisor
    before = supervisor.process(victim).pid
    with background(suite) as load:
        poll("some load before the fault", lambda: len(load.outcomes) >= 8, 30)
        fault = time.monotonic()
        os.kill(before, signal.SIGTERM)
        exited = poll(f"{victim} to exit", lambda: not pid_alive(before), 30)
        poll(f"{victim} back", restarted(suite, victim, before), 120)
        back = time.monotonic()
        mark = len(load.outcomes)
        poll("load after recovery", lambda: len(load.outcomes) >= mark + 8, 30)
    outcomes = load.outcomes
    for o in outcomes:
        if o.status is None:
            assert victim == "gateway" and o.error == "ConnectError", o
        elif o.kind == victim:
            assert o.ok or (o.status in (502, 503, 504) and o.problem), o
        else:
            assert o.ok, o
    lost, duplicated = records_complete(suite, outcomes, {k: k for k in ROUTES})
    during = figures(load.outcomes, fault, back, kind=victim if victim in ROUTES else None)
    report(
        f"SIGTERM {victim}", exited=f"{exited:.1f}s", during=during.row(), lost=lost, dup=duplicated
    )
    assert exited < 15 + DRAIN_PAUSE_SECONDS
    assert lost == 0
    assert duplicated == 0


def test_a_killed_gateway_is_an_outage_that_ends_at_once_and_loses_nothing(
    suite: RunningSuite,
) -> None:
    """Sent: SIGKILL to the gateway's main process (the pid supervisor knows) under load.
    Holds: its worker stops with it (it used to serve on, so no outage happened and the
    next gateway could not bind); clients see refused connections while it is away, no
    request hangs (each ends well within the client's 15 s timeout) and none is cut;
    supervisor has it back and every route answers 200 within RECOVERY_SECONDS of its
    readiness; every answered request's access records reach the log store, none twice
    (what the worker held unshipped it spilled at its stop, and its successor sent)."""
    supervisor = suite.supervisor
    before = supervisor.process("gateway").pid
    workers = psutil.Process(before).children()
    assert workers, "granian's worker"
    with background(suite) as load:
        poll("some load before the fault", lambda: len(load.outcomes) >= 8, 30)
        fault = time.monotonic()
        os.kill(before, signal.SIGKILL)
        poll(
            "the worker to stop with its main process",
            lambda: not any(pid_alive(worker.pid) for worker in workers),
            30,
        )
        poll("gateway back", restarted(suite, "gateway", before), 120)
        back = time.monotonic()
        mark = len(load.outcomes)
        poll("load after recovery", lambda: len(load.outcomes) >= mark + 8, 30)
    outcomes = load.outcomes
    for o in outcomes:
        assert o.ok or o.error == "ConnectError", o
    lost, duplicated = records_complete(suite, outcomes, {k: k for k in ROUTES})
    during = figures(outcomes, fault, back)
    report("SIGKILL gateway", during=during.row(), lost=lost, dup=duplicated)
    assert during.by_status.get("no answer"), "the kill went unnoticed"
    assert during.max_latency < 10
    assert during.recovery is not None and during.recovery < RECOVERY_SECONDS
    assert all(o.ok for o in outcomes[mark:]), outcomes[mark:]
    assert lost == 0
    assert duplicated == 0


def test_one_welcome_mail_per_registration_across_a_notifications_kill(
    suite: RunningSuite,
) -> None:
    """Sent: sign-ups while the notifications service is SIGKILLed and comes back (paced
    under the gateway's 10 sign-ups a minute per address; a 429 past it is no sign-up).
    Holds: every sign-up answered 202 gets exactly one welcome mail at the SMTP sink (its
    `auth.user_registered` event is neither lost nor handled twice)."""
    supervisor = suite.supervisor
    emails: list[str] = []

    def sign_up(client: httpx.Client, headers: dict[str, str]) -> httpx.Response:
        email = f"mail-{uuid.uuid4().hex[:12]}@example.com"
        body = {"email": email, "password": ADMIN_PASSWORD}
        response = client.post("/api/v1/auth/register", json=body, headers=headers)
        if response.status_code == 202:
            emails.append(email)
        return response

    before = supervisor.process("notifications").pid
    with Load(suite.gateway, {"sign-up": sign_up}, rate=0.25) as load:
        poll("sign-ups before the fault", lambda: len(emails) >= 3, 90)
        os.kill(before, signal.SIGKILL)
        poll("notifications back", restarted(suite, "notifications", before), 120)
        mark = len(emails)
        poll("sign-ups after recovery", lambda: len(emails) >= mark + 3, 120)
    assert all(o.status in (202, 429) for o in load.outcomes), load.outcomes

    def welcome_mails() -> Counter[str]:
        wanted = set(emails)
        received = read_mailbox(suite.mail_dir, limit=100_000)
        return Counter(m.to for m in received if m.to in wanted and m.subject.startswith("Welcome"))

    poll("a welcome mail for every sign-up", lambda: len(welcome_mails()) == len(emails), 90)
    counts = welcome_mails()
    report(
        "SIGKILL notifications (mail)",
        signups=len(emails),
        welcome_mails=sum(counts.values()),
        duplicated=sum(n - 1 for n in counts.values()),
    )
    assert set(counts.values()) == {1}, counts


def test_log_records_survive_the_log_service_down_while_a_service_restarts(
    suite: RunningSuite,
) -> None:
    """Sent: the log service stopped; auth stopped with SIGTERM and started again (its
    unshipped records spill to disk) while requests flow; then the log service started.
    Holds: every request's gateway and auth access records reach the store, none twice."""
    supervisor = suite.supervisor
    supervisor.stop("logs")
    try:
        before = supervisor.process("auth").pid
        calls: dict[str, Call] = {
            "auth": lambda client, headers: client.get(ROUTES["auth"], headers=headers)
        }
        with Load(suite.gateway, calls) as load:
            poll("some load before the restart", lambda: len(load.outcomes) >= 8, 30)
            os.kill(before, signal.SIGTERM)
            poll("auth back", restarted(suite, "auth", before), 120)
            mark = len(load.outcomes)
            poll("load after the restart", lambda: len(load.outcomes) >= mark + 8, 30)
    finally:
        supervisor.start("logs")
    poll("logs back", lambda: readiness_of(suite, "logs") == 200, 120)
    lost, duplicated = records_complete(suite, load.outcomes, {"auth": "auth"})
    report("logs down, auth restarted", requests=len(load.outcomes), lost=lost, dup=duplicated)
    assert lost == 0
    assert duplicated == 0


def readiness_of(suite: RunningSuite, name: str) -> int | None:
    try:
        return httpx.get(f"{suite.url(name)}/health/ready", timeout=2).status_code
    except httpx.HTTPError:
        return None


class DelayingProxy:
    """A TCP proxy to `target_port` that holds each chunk the upstream sends back for
    `delay` seconds (0: passes it at once); an asyncio server in a thread of its own."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.delay = 0.0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def __enter__(self) -> DelayingProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", self.port), self._loop
        ).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        pipes = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in pipes:
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, delayed: bool) -> None:
            try:
                while data := await src.read(65536):
                    if delayed and self.delay:
                        await asyncio.sleep(self.delay)
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))


def test_a_slow_upstream_costs_its_routes_only_and_is_served_again_once_fast(
    suite: RunningSuite, redis_url: str, tmp_path: Path
) -> None:
    """Sent: a second gateway whose logs upstream is reached through a TCP proxy written
    here, which then holds every answer for 5 s, then stops holding. Holds: the logs
    route answers 504/503 problem+json within the 2 s upstream timeout (the circuit opens
    after 3 failures and answers at once), auth's route keeps answering 200, and once the
    proxy is fast again the route is served again within RECOVERY_SECONDS."""
    admin = suite.admin()
    layout = Layout(
        suite.root,
        suite.root / ".keelson",
        base_port=suite.base_port,
        zmq_base_port=suite.zmq_base_port,
        external_database_url=suite.database_url,
        external_redis_url=redis_url,
        # The suite's own keys (made by its `keelson up`): the services admit identity
        # headers signed with its identity key alone.
        own_master_key=True,
        own_identity_key=True,
    )
    logs_port = suite.base_port + next(s.port_offset for s in SERVICES if s.name == "logs")
    with DelayingProxy(logs_port) as proxy:
        env = layout.service_environment()
        upstream = "KEELSON_PLUGINS__ROUTING__UPSTREAMS__LOGS__"
        env.update(
            {
                upstream + "URL": f"http://127.0.0.1:{proxy.port}",
                upstream + "TIMEOUT_SECONDS": "2",
                upstream + "RETRIES": "0",
                upstream + "FAILURE_THRESHOLD": "3",
            }
        )
        env["KEELSON_IDENTITY__SIGNING_KEY_FILE"] = str(layout.identity_key_path)
        gateway = ServiceProcess("gateway", tmp_path, env)
        try:
            asyncio.run(gateway.wait_for("/health/ready", timeout=120))
            calls: dict[str, Call] = {
                "logs": lambda c, h: c.get(ROUTES["logs"], headers={**admin, **h}),
                "auth": lambda c, h: c.get(ROUTES["auth"], headers=h),
            }
            with Load(gateway.url, calls) as load:
                poll("load before", lambda: len(load.outcomes) >= 6, 30)
                slowed = time.monotonic()
                proxy.delay = 5.0
                poll(
                    "the circuit open",
                    lambda: any(
                        o.kind == "logs" and o.status == 503 and o.started > slowed
                        for o in load.outcomes
                    ),
                    60,
                )
                fast = time.monotonic()
                proxy.delay = 0.0
                try:
                    recovered = poll(
                        "logs served again",
                        lambda: any(
                            o.kind == "logs" and o.ok and o.started > fast for o in load.outcomes
                        ),
                        30,
                    )
                except BaseException:
                    after = [(o.kind, o.status) for o in load.outcomes if o.started > fast]
                    print("AFTER", after[-20:], gateway.log.read_text()[-3000:], flush=True)
                    raise
        finally:
            gateway.stop()
    slow = load.between(slowed, fast)
    for o in load.outcomes:
        assert o.status is not None, o
        if o.kind == "auth":
            assert o.ok, o
        elif not o.ok:
            assert o.status in (503, 504) and o.problem, o
    assert max(o.seconds for o in slow if o.kind == "logs") < 5  # the 2 s timeout, not 5 s
    report(
        "slow upstream (5 s delay)",
        during=figures(load.outcomes, slowed, fast, kind="logs").row(),
        recovered=f"{recovered:.1f}s",
    )
    assert recovered < RECOVERY_SECONDS

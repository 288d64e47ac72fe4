"""The logs API on a live server, fed by real sender processes over ZeroMQ."""

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest
from logs_testkit import SenderProcess, operator_headers, sender_credentials

from keelson.logging import LogShipper
from keelson_dev.testing import LiveServer, eventually
from logs_service.app import create_app
from logs_service.settings import Settings

PER_SERVICE = 400
TAIL_SERVICE = f"tail-{uuid.uuid4().hex[:8]}"


@dataclass
class Suite:
    url: str
    settings: Settings
    services: list[str]

    @property
    def headers(self) -> dict[str, str]:
        return operator_headers(self.settings, "ops")


@pytest.fixture(scope="module")
def suite(
    make_logs_settings: Callable[..., Settings], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Suite]:
    settings = make_logs_settings()
    suffix = uuid.uuid4().hex[:8]
    services = [f"{name}-{suffix}" for name in ("alpha", "beta", "gamma")]
    settings.logs.senders = [*services, TAIL_SERVICE]
    spill = tmp_path_factory.mktemp("spill")
    with LiveServer(create_app(settings)) as server:
        senders = [
            SenderProcess(settings.logs.bind_endpoint, name, PER_SERVICE, spill / name)
            for name in services
        ]
        try:
            results = [sender.result() for sender in senders]
        finally:
            for sender in senders:
                sender.kill()
        assert all(r["drained"] and r["dropped"] == {} for r in results)
        yield Suite(server.url, settings, services)


@pytest.fixture
async def client(suite: Suite) -> httpx.AsyncClient:
    async with httpx.AsyncClient(base_url=suite.url, headers=suite.headers, timeout=10) as client:
        yield client


async def fetch_all(client: httpx.AsyncClient, **params: object) -> list[dict]:
    items: list[dict] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/api/v1/logs", params=query)).raise_for_status().json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


async def test_records_from_three_processes_arrive_once_each(
    suite: Suite, client: httpx.AsyncClient
) -> None:
    stats = (await client.get("/api/v1/logs/stats")).raise_for_status().json()
    for service in suite.services:
        assert stats["by_service"][service] == PER_SERVICE
        items = await fetch_all(client, service=service, limit=1000)
        assert len(items) == PER_SERVICE
        assert {item["attrs"]["n"] for item in items} == set(range(PER_SERVICE))


async def test_each_filter(suite: Suite, client: httpx.AsyncClient) -> None:
    alpha, beta, _ = suite.services

    async def items(**params: object) -> list[dict]:
        return await fetch_all(client, limit=1000, **params)

    errors = await items(service=alpha, level="error")
    assert len(errors) == PER_SERVICE // 4 and {i["level"] for i in errors} == {"ERROR"}
    warnings_up = await items(service=alpha, level="WARNING")
    assert {i["level"] for i in warnings_up} == {"WARNING", "ERROR"}
    assert len(warnings_up) == PER_SERVICE // 2

    by_request = await items(request_id=f"{beta}-req-3")
    assert len(by_request) == PER_SERVICE // 10
    assert {i["service"] for i in by_request} == {beta}

    by_user = await items(user_id="user-5", service=beta)
    assert len(by_user) == len([n for n in range(PER_SERVICE) if n % 7 == 5])

    text = await items(q="record 17", service=alpha)
    assert [i["message"] for i in text] == [f"{alpha} record 17 of the burst"]

    everything = await items(service=alpha)
    middle = sorted(everything, key=lambda i: i["ts"])[100:200]
    since, until = middle[0]["ts"], middle[-1]["ts"]
    window = await items(service=alpha, since=since, until=until)
    assert all(since <= i["ts"] < until for i in window)
    assert {i["id"] for i in window} >= {i["id"] for i in middle[:-1] if i["ts"] < until}
    assert len(await items(service=alpha, since="2000-01-01T00:00:00Z", until="2000-01-02")) == 0


async def test_pages_have_no_duplicates_or_gaps_while_records_arrive(
    suite: Suite, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    gamma = suite.services[2]
    newcomer = SenderProcess(suite.settings.logs.bind_endpoint, gamma, 3000, tmp_path, rate=1000)
    try:

        async def arriving() -> bool:
            page = await client.get("/api/v1/logs/stats", params={"since": "2000-01-01"})
            return page.json()["by_service"][gamma] > PER_SERVICE + 200

        await eventually(arriving, timeout=20)
        # Everything committed before the walk starts must be walked over exactly once.
        before = {i["id"] for i in await fetch_all(client, service=gamma, limit=1000)}
        seen: list[str] = []
        cursor = None
        while cursor or not seen:
            params = {"service": gamma, "limit": 37, **({"cursor": cursor} if cursor else {})}
            page = (await client.get("/api/v1/logs", params=params)).json()
            if not seen:
                newest_seen = page["items"][0]["ts"]
            seen += [item["id"] for item in page["items"]]
            cursor = page["next_cursor"]
        assert newcomer.result()["dropped"] == {}
    finally:
        newcomer.kill()
    assert len(seen) == len(set(seen)), "a record appeared on two pages"
    assert before <= set(seen), "a record was skipped"
    everything = await fetch_all(client, service=gamma, limit=1000)
    assert len(everything) == PER_SERVICE + 3000
    assert len(before) < len(everything), "nothing arrived during the walk"
    assert set(seen) <= {i["id"] for i in everything if i["ts"] <= newest_seen}


async def test_stats_count_by_service_and_level(suite: Suite, client: httpx.AsyncClient) -> None:
    alpha = suite.services[0]
    stats = (await client.get("/api/v1/logs/stats", params={"since": "2000-01-01"})).json()
    mine = {c["level"]: c["count"] for c in stats["counts"] if c["service"] == alpha}
    assert mine == {level: PER_SERVICE // 4 for level in ("DEBUG", "INFO", "WARNING", "ERROR")}
    assert stats["total"] >= 3 * PER_SERVICE


async def test_only_admins_and_operators_read_logs(suite: Suite) -> None:
    async with httpx.AsyncClient(base_url=suite.url, timeout=10) as anonymous:
        response = await anonymous.get("/api/v1/logs")
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        user = operator_headers(suite.settings, "user")
        assert (await anonymous.get("/api/v1/logs/stats", headers=user)).status_code == 403
        admin = operator_headers(suite.settings, "admin")
        assert (await anonymous.get("/api/v1/logs", headers=admin)).status_code == 200


async def test_a_bad_cursor_is_a_problem_not_a_crash(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/logs", params={"cursor": "garbage!"})
    assert response.status_code == 400
    assert response.json()["detail"].startswith("cursor")


async def test_a_tail_client_receives_new_records_within_a_second(
    suite: Suite, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    service = TAIL_SERVICE
    shipper = LogShipper(
        suite.settings.logs.bind_endpoint,
        service=service,
        spill_dir=tmp_path,
        ack_timeout=0.5,
        credentials=sender_credentials(service),
    )
    logger = logging.getLogger(f"tail.{service}")
    logger.handlers, logger.propagate = [shipper], False
    params = {"service": service, "level": "ERROR"}
    try:
        async with client.stream("GET", "/api/v1/logs/tail", params=params) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = response.aiter_lines()
            assert (await anext(lines)).startswith(": tail started")
            logger.warning("below the level filter")
            started = time.monotonic()
            logger.error("disk almost full")
            record = None
            async with asyncio.timeout(1.0):
                async for line in lines:
                    if line.startswith("data: "):
                        record = orjson.loads(line.removeprefix("data: "))
                        break
            elapsed = time.monotonic() - started
    finally:
        shipper.close()
    assert record is not None and record["message"] == "disk almost full"
    assert record["service"] == service and record["level"] == "ERROR"
    print(f"tail latency {elapsed * 1000:.0f} ms")


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/v1/logs", {"service": "a\x00b"}),
        ("/api/v1/logs", {"q": "x\x00"}),
        ("/api/v1/logs", {"request_id": "r\x1b[2J"}),
        ("/api/v1/logs", {"until": "0001-01-01T00:00:00+14:00"}),
        ("/api/v1/logs", {"since": "9999-12-31T23:59:59-14:00"}),
        ("/api/v1/logs", {"cursor": "\x00"}),
        ("/api/v1/logs/stats", {"until": "0001-01-01T00:00:00+14:00"}),
        ("/api/v1/logs/stats", {"since": "1969-12-31T23:59:59Z"}),
    ],
)
async def test_filters_out_of_bounds_are_refused_with_422(
    client: httpx.AsyncClient, path: str, params: dict[str, str]
) -> None:
    response = await client.get(path, params=params)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"


async def test_an_offset_time_is_read_as_the_same_instant(client: httpx.AsyncClient) -> None:
    # +14:00 and UTC name the same instant: both windows find the same records.
    utc = await client.get("/api/v1/logs/stats", params={"since": "2000-01-01T00:00:00Z"})
    kiribati = await client.get("/api/v1/logs/stats", params={"since": "2000-01-01T14:00:00+14:00"})
    assert utc.status_code == kiribati.status_code == 200
    assert utc.json() == kiribati.json()

"""The access_log plugin: one access record per request, through keelson.logging's console."""

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from gateway_testkit import ServerThread, catalog_ready, running_gateway
from gateway_upstream import TokenMint
from test_pipeline import bearer, chain

from gateway.plugins.access_log import ACCESS_LOGGER
from keelson.logging import ConsoleHandler, JsonFormatter


@pytest.fixture
def access_console() -> Iterator[Callable[[], io.StringIO]]:
    """Makes keelson.logging's JSON console the access log's only handler, so that the
    plugin takes the fast path; call it in the test, after pytest has attached its own
    capture handlers to every logger that does not propagate."""
    logger = logging.getLogger(ACCESS_LOGGER)
    saved = (logger.handlers, logger.propagate, logger.level)

    def install() -> io.StringIO:
        stream = io.StringIO()
        handler = ConsoleHandler(stream)
        handler.setFormatter(JsonFormatter("gateway"))
        logger.handlers, logger.propagate = [handler], False
        logger.setLevel(logging.INFO)
        return stream

    yield install
    logger.handlers, logger.propagate = saved[0], saved[1]
    logger.setLevel(saved[2])


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_every_outcome_is_one_json_line_with_route_status_and_ids(
    upstream: ServerThread,
    auth_upstream: ServerThread,
    mint: TokenMint,
    access_console: Callable[[], io.StringIO],
) -> None:
    access_lines = access_console()
    async with running_gateway(chain(upstream, auth_upstream)) as (app, client):
        await catalog_ready(app, "logs")
        refused = await client.get("/api/v1/logs/echo")
        token = mint.mint("user-7")
        ok = await client.get(
            "/api/v1/logs/echo", headers={**bearer(token), "X-Request-ID": "req-abc"}
        )
        again = await client.get("/api/v1/logs/echo", headers=bearer(token))  # cached token
        # The transport runs the app in this task: a user id left bound would show here.
        anonymous = await client.get("/api/v1/logs/echo")
        assert (await client.get("/health/live")).status_code == 200
    assert refused.status_code == 401 and ok.status_code == 200
    assert again.status_code == 200 and anonymous.status_code == 401

    first, second, third, fourth = records(access_lines)  # /health is not logged
    assert third["user_id"] == "user-7" and fourth["user_id"] is None
    assert first["logger"] == "gateway.access" and first["level"] == "INFO"
    assert first["message"].startswith("GET /api/v1/logs/echo 401 ")
    assert first["attrs"]["route"] == "/api/v1/logs/echo" and first["attrs"]["status"] == 401
    assert first["request_id"] == refused.headers["x-request-id"] and first["user_id"] is None
    assert second["request_id"] == "req-abc" and second["user_id"] == "user-7"
    assert second["trace_id"] and second["service"] == "gateway"
    attrs = second["attrs"]
    assert (attrs["method"], attrs["status"], attrs["client_ip"]) == ("GET", 200, "127.0.0.1")
    assert attrs["duration_ms"] > 0 and set(attrs) == {
        "method",
        "route",
        "status",
        "duration_ms",
        "client_ip",
    }


async def test_server_errors_are_warnings_and_the_level_filters(
    upstream: ServerThread,
    auth_upstream: ServerThread,
    access_console: Callable[[], io.StringIO],
) -> None:
    access_lines = access_console()
    settings = chain(upstream, auth_upstream, security={"enabled": False})
    async with running_gateway(settings) as (app, client):
        await catalog_ready(app, "logs")
        assert (await client.get("/api/v1/payments/charges")).status_code >= 500  # dead upstream
        logging.getLogger(ACCESS_LOGGER).setLevel(logging.WARNING)
        assert (await client.get("/api/v1/logs/items/1")).status_code == 200
        assert (await client.get("/api/v1/payments/charges")).status_code >= 500
    first, second = records(access_lines)
    assert first["level"] == second["level"] == "WARNING"
    assert first["attrs"]["status"] >= 500 and second["attrs"]["status"] >= 500

"""The proxy over an in-process transport to a real upstream app (no socket, no pool)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from gateway_testkit import gateway_settings, running_gateway, upstreams_config
from gateway_upstream import create_upstream
from starlette.types import Receive, Scope, Send

from gateway.asgi_upstream import ASGIUpstream
from gateway.settings import Settings


def settings_with_logs_in_process() -> tuple[Settings, dict[str, ASGIUpstream]]:
    # The logs URL points nowhere: every proxied request must take the transport.
    settings = gateway_settings(routing=upstreams_config(), validation={"enabled": False})
    return settings, {"logs": ASGIUpstream(create_upstream())}


async def test_requests_reach_the_app_with_the_gateways_headers() -> None:
    settings, transports = settings_with_logs_in_process()
    async with running_gateway(settings, transports=transports) as (_, client):
        response = await client.post(
            "/api/v1/logs/echo?a=1", json={"a": 1}, headers={"X-Keelson-User": "forged"}
        )
    assert response.status_code == 200
    assert response.headers["x-upstream"] == "yes"
    assert "upstream-server" not in response.headers.get("server", "")
    echoed = response.json()
    seen = dict(echoed["headers"])
    assert (echoed["method"], echoed["query"], echoed["body"]) == ("POST", "a=1", '{"a":1}')
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert "x-keelson-user" not in seen
    assert seen["content-length"] == "7"


async def test_streams_go_both_ways() -> None:
    settings, transports = settings_with_logs_in_process()

    async def parts() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield b"z" * 16384

    async with running_gateway(settings, transports=transports) as (_, client):
        upload = await client.post("/api/v1/logs/upload", content=parts())
        download = await client.get("/api/v1/logs/stream?chunks=64&size=16384")
    assert upload.status_code == 200 and upload.json() == {"received": 64 * 16384}
    assert download.status_code == 200 and len(download.content) == 64 * 16384
    assert download.content[:1] == b"A" and download.content[-1:] == b"L"


async def test_an_app_that_fails_before_answering_is_a_502() -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("upstream bug")

    settings = gateway_settings(routing=upstreams_config(), validation={"enabled": False})
    transports = {"logs": ASGIUpstream(broken)}
    async with running_gateway(settings, transports=transports) as (_, client):
        response = await client.post("/api/v1/logs/echo", json={})
    assert response.status_code == 502
    assert response.headers["content-type"] == "application/problem+json"
    assert "upstream bug" not in response.text

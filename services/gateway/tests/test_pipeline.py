import asyncio
import logging

import pytest
import yaml
import zmq
import zmq.asyncio
from gateway_testkit import (
    ServerThread,
    catalog_ready,
    gateway_settings,
    private_bus,
    running_gateway,
    upstreams_config,
)
from gateway_upstream import TokenMint

from gateway.app import create_app
from gateway.settings import Settings
from keelson.config import load_settings
from keelson_dev.testing import eventually

SECURITY = {
    "policies": [
        {"path": "/api/v1/logs/items*", "allow": "public"},
        {"path": "/api/v1/admin*", "allow": "role:admin"},
        {"path": "/health*", "allow": "public"},
    ]
}


def chain(upstream: ServerThread, auth_upstream: ServerThread, **plugins: object):
    values = {
        "routing": upstreams_config(logs=upstream.url, auth=auth_upstream.url),
        "security": SECURITY,
        "rate_limiting": {
            "storage": "memory",
            "rules": [{"path": "/api/v1/logs/items*", "limit": "2/minute"}],
        },
        **plugins,
    }
    return gateway_settings(**values)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_layers_run_in_priority_order(
    upstream: ServerThread,
    auth_upstream: ServerThread,
    mint: TokenMint,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    async with running_gateway(chain(upstream, auth_upstream)) as (app, client):
        await catalog_ready(app, "logs")
        assert app.state.pipeline.layers == (
            "access_log",
            "encryption",
            "security",
            "rate_limiting",
            "validation",
            "routing",
        )
        # security before rate limiting: a refused caller spends no budget and sees no limits
        anonymous = await client.get("/api/v1/logs/echo")
        assert anonymous.status_code == 401 and "ratelimit-limit" not in anonymous.headers
        # rate limiting before validation: a 415 counts against the budget
        bad = await client.post(
            "/api/v1/logs/items/x", content=b"<x/>", headers={"content-type": "application/xml"}
        )
        assert bad.status_code == 415 and bad.headers["ratelimit-remaining"] == "1"
        ok = await client.get("/api/v1/logs/items/1")
        assert ok.status_code == 200 and ok.headers["ratelimit-remaining"] == "0"
        # security wraps rate limiting: a 429 still carries the security headers
        limited = await client.get("/api/v1/logs/items/2")
        assert limited.status_code == 429
        assert limited.headers["x-frame-options"] == "DENY"
        # the access log is outermost: it records every outcome, with the route template
        token = mint.mint("user-7")
        assert (await client.get("/api/v1/logs/echo", headers=bearer(token))).status_code == 200
    records = [r for r in caplog.records if r.name == "gateway.access"]
    seen = [(r.status, r.route) for r in records]
    assert (401, "/api/v1/logs/echo") in seen
    assert (415, "/api/v1/logs/items/{item_id}") in seen
    assert (429, "/api/v1/logs/items/{item_id}") in seen
    last = records[-1]
    assert last.user_id == "user-7" and last.client_ip == "127.0.0.1"
    assert last.method == "GET" and last.request_id and last.duration_ms > 0


async def test_disabled_plugin_is_skipped(
    upstream: ServerThread, auth_upstream: ServerThread
) -> None:
    settings = chain(upstream, auth_upstream, rate_limiting={"enabled": False})
    async with running_gateway(settings) as (app, client):
        assert "rate_limiting" not in app.state.pipeline.layers
        response = await client.get("/api/v1/logs/items/1")
        assert response.status_code == 200 and "ratelimit-limit" not in response.headers
        health = (await client.get("/health")).json()
        assert health["plugins"]["rate_limiting"]["state"] == "disabled"


async def test_failed_plugin_is_error_while_the_rest_serve(
    upstream: ServerThread, auth_upstream: ServerThread, mint: TokenMint
) -> None:
    bus = private_bus()
    first = chain(upstream, auth_upstream, message_bus={"mode": "always"})
    first.bus = first.bus.model_copy(update=bus)
    second = chain(
        upstream,
        auth_upstream,
        message_bus={"mode": "always"},
        rate_limiting={"storage": "redis"},  # no Redis configured: fails to start
    )
    second.bus = second.bus.model_copy(update=bus)
    async with running_gateway(first) as (_, client_a), running_gateway(second) as (_app, client):
        admin = bearer(mint.mint(roles=("admin",)))
        report = (await client.get("/api/v1/admin/plugins", headers=admin)).json()
        assert report["degraded"] is True
        assert report["plugins"]["message_bus"]["state"] == "error"  # ports held by `first`
        assert "Address already in use" in report["plugins"]["message_bus"]["error"]
        assert report["plugins"]["rate_limiting"]["state"] == "error"
        assert report["plugins"]["routing"]["state"] == "running"
        assert "rate_limiting" not in report["pipeline"]
        assert (await client.get("/api/v1/logs/items/1")).status_code == 200
        ready = await client.get("/health/ready")
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"
        first_report = (await client_a.get("/api/v1/admin/plugins", headers=admin)).json()
        assert first_report["plugins"]["message_bus"]["healthy"] is True


async def test_hosted_broker_relays_messages(upstream: ServerThread) -> None:
    settings = gateway_settings(routing=upstreams_config(logs=upstream.url))
    async with running_gateway(settings):
        ctx = zmq.asyncio.Context()
        sub = ctx.socket(zmq.SUB)
        pub = ctx.socket(zmq.PUB)
        try:
            sub.connect(settings.bus.zmq_xpub_endpoint)
            sub.subscribe(b"test.")
            pub.connect(settings.bus.zmq_xsub_endpoint)

            async def delivered() -> list[bytes] | None:
                # Sent again until the subscription has reached the broker.
                await pub.send_multipart([b"test.topic", b"hello"])
                return await sub.recv_multipart() if await sub.poll(50) else None

            assert await eventually(delivered) == [b"test.topic", b"hello"]
        finally:
            sub.close(0)
            pub.close(0)
            ctx.term()


async def test_reload_rereads_policies_and_limits(
    upstream: ServerThread, auth_upstream: ServerThread, mint: TokenMint, tmp_path, monkeypatch
) -> None:
    def write(limit: str, policy: str) -> None:
        config = {
            "env": "test",
            "log": {"ship_endpoint": None},
            "bus": private_bus(),
            "plugins": {
                "routing": upstreams_config(logs=upstream.url, auth=auth_upstream.url),
                "rate_limiting": {
                    "storage": "memory",
                    "rules": [{"path": "/api/v1/logs/items*", "limit": limit}],
                },
                "security": {
                    "policies": [
                        {"path": "/api/v1/logs/items*", "allow": policy},
                        {"path": "/api/v1/admin*", "allow": "role:admin"},
                    ]
                },
            },
        }
        (tmp_path / "keelson.yaml").write_text(yaml.safe_dump(config))

    monkeypatch.setenv("KEELSON_CONFIG_DIR", str(tmp_path))
    write("5/minute", "public")
    app = create_app(load_settings(Settings))
    admin = bearer(mint.mint(roles=("admin",)))
    async with app.router.lifespan_context(app):
        import httpx

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            first = await client.get("/api/v1/logs/items/1")
            assert first.status_code == 200 and first.headers["ratelimit-limit"] == "5"
            write("50/minute", "role:ops")
            reloaded = await client.post("/api/v1/admin/reload", headers=admin)
            assert reloaded.status_code == 200
            assert "security" in reloaded.json()["reloaded"]
            assert (await client.get("/api/v1/logs/items/1")).status_code == 401
            ops = bearer(mint.mint(roles=("ops",)))
            after = await client.get("/api/v1/logs/items/1", headers=ops)
            assert after.status_code == 200 and after.headers["ratelimit-limit"] == "50"

            (tmp_path / "keelson.yaml").write_text("plugins: {security: {default_policy: nope}}")
            refused = await client.post("/api/v1/admin/reload", headers=admin)
            assert refused.status_code == 422
            still = await client.get("/api/v1/logs/items/1", headers=ops)
            assert still.status_code == 200


async def test_concurrent_chain_requests(
    upstream: ServerThread, auth_upstream: ServerThread, mint: TokenMint
) -> None:
    settings = chain(
        upstream, auth_upstream, rate_limiting={"storage": "memory", "default": "10000/minute"}
    )
    token = bearer(mint.mint())
    async with running_gateway(settings) as (_, client):
        responses = await asyncio.gather(
            *(client.get(f"/api/v1/logs/echo?i={i}", headers=token) for i in range(40))
        )
    assert all(r.status_code == 200 for r in responses)

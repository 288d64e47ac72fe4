"""Every service: migrates its own schema, starts on the factory, reports ready, has /metrics."""

import asyncio
import importlib

import httpx
import pytest
from fastapi import FastAPI

from keelson.config import LogSettings
from keelson.keys import SigningKey
from keelson_dev.embedded import free_port
from keelson_dev.suite import SERVICES
from keelson_dev.testing import LiveServer, migrated


def jwks_app() -> FastAPI:
    """A JWKS endpoint with one key: services that verify tokens are not ready without keys."""
    app = FastAPI()
    document = {"keys": [SigningKey.generate().public_jwk()]}

    @app.get("/.well-known/jwks.json")
    async def jwks() -> dict[str, object]:
        return document

    return app


@pytest.mark.parametrize(("service", "package"), [(s.name, s.package) for s in SERVICES])
async def test_service_starts_ready_with_metrics(
    service: str, package: str, test_database_url: str, redis_url: str
) -> None:
    await asyncio.to_thread(migrated, test_database_url, package)
    settings_cls = importlib.import_module(f"{package}.settings").Settings
    with LiveServer(jwks_app()) as jwks:
        settings = settings_cls(
            env="test",
            database_url=test_database_url,
            redis_url=redis_url,
            log=LogSettings(ship_endpoint=None),
            # the logs service's ZeroMQ socket, off the suite's fixed port (others ignore it)
            logs={"bind_endpoint": f"tcp://127.0.0.1:{free_port()}"},
            plugins={"auth": {"jwks_url": f"{jwks.url}/.well-known/jwks.json"}},
        )
        app = importlib.import_module(f"{package}.app").create_app(settings)
        with LiveServer(app) as server:
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                live = await client.get("/health/live")
                assert live.status_code == 200
                summary = (await client.get("/health")).json()
                assert summary["service"] == service
                if service != "gateway":  # the gateway has no database; its readiness is upstreams'
                    assert summary["plugins"]["database"]["state"] == "running"
                    ready = await client.get("/health/ready")
                    assert ready.status_code == 200, ready.text
                metrics = await client.get("/metrics")
                assert metrics.status_code == 200
                assert "http_requests_total" in metrics.text
                missing = await client.get("/definitely-not-here")
                assert missing.headers["content-type"] == "application/problem+json"

import asyncio
import re
import signal
from pathlib import Path

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from gateway_testkit import (
    GatewayProcess,
    ServerThread,
    catalog_ready,
    gateway_settings,
    private_bus,
    running_gateway,
    upstreams_config,
    write_config,
)
from prometheus_client import REGISTRY

from keelson_dev.testing import eventually


async def test_readiness_is_degraded_when_an_optional_upstream_is_out(
    upstream: ServerThread, auth_upstream: ServerThread
) -> None:
    # auth (required) is up; logs is up; notifications and payments are not
    settings = gateway_settings(routing=upstreams_config(logs=upstream.url, auth=auth_upstream.url))
    async with running_gateway(settings) as (_, client):
        ready = await client.get("/health/ready")
        assert ready.status_code == 200
        assert ready.json()["status"] == "degraded"
        detail = ready.json()["failing"]["routing"]["detail"]
        assert "auth: ready" in detail and "logs: ready" in detail
        assert "payments: unreachable" in detail


async def test_readiness_fails_when_a_required_upstream_is_out(upstream: ServerThread) -> None:
    config = upstreams_config(logs=upstream.url)  # auth points at a closed port
    async with running_gateway(gateway_settings(routing=config)) as (_, client):
        ready = await client.get("/health/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
        assert (await client.get("/health/live")).status_code == 200


async def test_all_upstreams_ready(upstream: ServerThread, auth_upstream: ServerThread) -> None:
    urls = {"auth": auth_upstream.url, "logs": upstream.url}
    urls.update(notifications=upstream.url, payments=upstream.url)
    settings = gateway_settings(routing=upstreams_config(**urls))
    async with running_gateway(settings) as (_, client):

        async def ready() -> bool:
            response = await client.get("/health/ready")
            return response.status_code == 200 and response.json()["status"] == "ready"

        # The bus reports ready once its first message made it through the hosted broker.
        await eventually(ready)


async def test_openapi_and_docs_merge_the_upstreams(upstream: ServerThread) -> None:
    settings = gateway_settings(routing=upstreams_config(logs=upstream.url))
    async with running_gateway(settings) as (app, client):
        await catalog_ready(app, "logs")
        document = (await client.get("/openapi.json")).json()
        assert "/api/v1/logs/items" in document["paths"]
        assert "/api/v1/logs/items/{item_id}" in document["paths"]
        assert "/api/v1/admin/plugins" in document["paths"]
        assert "/api/v1/handshake" in document["paths"]
        assert "Item" in document["components"]["schemas"]
        ref = document["paths"]["/api/v1/logs/items"]["post"]["requestBody"]["content"]
        assert ref["application/json"]["schema"]["$ref"] == "#/components/schemas/Item"
        docs = await client.get("/docs")
        assert docs.status_code == 200 and "/openapi.json" in docs.text
        # Every script and stylesheet the pages name is served by the gateway itself.
        redoc = await client.get("/redoc")
        assets = re.findall(r'(?:src|href)="([^"]+)"', docs.text + redoc.text)
        assert assets and all(url.startswith("/docs/assets/") for url in assets), assets
        for url in assets:
            asset = await client.get(url)
            assert asset.status_code == 200 and len(asset.content) > 1000, url


async def test_metrics_per_route_upstream_and_circuit(upstream: ServerThread) -> None:
    settings = gateway_settings(routing=upstreams_config(logs=upstream.url))
    # The counters are process-wide: other tests may already have counted this route.
    item_requests = {
        "method": "GET",
        "route": "/api/v1/logs/items/{item_id}",
        "service": "gateway",
        "status": "200",
    }
    before = REGISTRY.get_sample_value("http_requests_total", item_requests) or 0.0
    async with running_gateway(settings) as (app, client):
        await catalog_ready(app, "logs")
        for i in range(3):
            assert (await client.get(f"/api/v1/logs/items/{i}")).status_code == 200
        await client.get("/api/v1/payments/anything")  # payments is down: 503
        # granian hands any method on: one RFC 9110 does not define is labelled OTHER.
        brewed = await client.request("BREW", "/api/v1/payments/anything")
        metrics = (await client.get("/metrics")).text
    assert brewed.status_code == 503, brewed.text
    assert "BREW" not in metrics
    assert (
        'gateway_upstream_requests_total{method="OTHER",status="unreachable",upstream="payments"}'
        in metrics
    )
    assert REGISTRY.get_sample_value("http_requests_total", item_requests) == before + 3
    assert (
        'http_requests_total{method="GET",route="/api/v1/logs/items/{item_id}",'
        'service="gateway",status="200"}'
    ) in metrics
    assert 'gateway_upstream_requests_total{method="GET",status="200",upstream="logs"}' in metrics
    assert 'gateway_upstream_request_duration_seconds_count{upstream="logs"}' in metrics
    assert (
        'gateway_upstream_requests_total{method="GET",status="unreachable",upstream="payments"}'
        in metrics
    )
    assert 'gateway_circuit_state{upstream="logs"} 0.0' in metrics


async def test_sighup_reloads_limits(upstream: ServerThread, tmp_path: Path) -> None:
    def config(limit: str) -> dict:
        return {
            "log": {"ship_endpoint": None},
            "bus": private_bus(),
            "plugins": {
                "security": {"enabled": False},
                "routing": upstreams_config(logs=upstream.url),
                "rate_limiting": {
                    "storage": "memory",
                    "rules": [{"path": "/api/v1/logs/echo", "limit": limit}],
                },
            },
        }

    write_config(tmp_path, config("7/minute"))
    gateway = GatewayProcess(tmp_path).start()
    try:
        first = httpx.get(gateway.url + "/api/v1/logs/echo", timeout=10)
        assert first.headers["ratelimit-limit"] == "7"
        write_config(tmp_path, config("70/minute"))
        assert gateway.process is not None
        gateway.process.send_signal(signal.SIGHUP)

        def limit() -> str:
            try:
                answer = httpx.get(gateway.url + "/api/v1/logs/echo", timeout=10)
            except httpx.TransportError:  # refused while granian replaces its worker
                return ""
            return answer.headers["ratelimit-limit"]

        # granian answers SIGHUP by replacing its worker, which reads the new configuration
        # as it starts: on a loaded machine that takes a while.
        await eventually(lambda: limit() == "70", timeout=60, interval=0.05)
        assert gateway.process.poll() is None
    finally:
        gateway.stop()


async def test_sighup_with_a_bad_configuration_keeps_the_gateway_serving(
    upstream: ServerThread, tmp_path: Path
) -> None:
    def config(limit: str) -> dict:
        rules = [{"path": "/api/v1/logs/echo", "limit": limit}]
        return {
            "log": {"ship_endpoint": None},
            "bus": private_bus(),
            "plugins": {
                "security": {"enabled": False},
                "routing": upstreams_config(logs=upstream.url),
                "rate_limiting": {"storage": "memory", "rules": rules},
            },
        }

    write_config(tmp_path, config("7/minute"))
    gateway = GatewayProcess(tmp_path, logs=True).start()
    try:
        assert gateway.process is not None and gateway.process.stdout is not None
        with (tmp_path / "keelson.yaml").open("a") as file:
            file.write("plugins: [unclosed\n")  # YAML that does not parse
        gateway.process.send_signal(signal.SIGHUP)
        records = gateway.process.stdout
        refused = await asyncio.to_thread(
            lambda: any("reload refused" in line.decode() for line in records)
        )
        assert refused
        assert gateway.process.poll() is None
        answer = httpx.get(gateway.url + "/api/v1/logs/echo", timeout=10)
        assert answer.status_code == 200 and answer.headers["ratelimit-limit"] == "7"
    finally:
        gateway.stop()


async def test_sigterm_turns_readiness_off_before_the_gateway_stops(
    upstream: ServerThread, tmp_path: Path
) -> None:
    # granian's main process gets the signal; its workers' readiness must fail at once and
    # the listener close only after the drain pause (keelson up's is 2 s).
    config = {"log": {"ship_endpoint": None}, "bus": private_bus()}
    config["plugins"] = {"routing": upstreams_config(logs=upstream.url)}
    write_config(tmp_path, config)
    gateway = GatewayProcess(tmp_path, env={"KEELSON_DRAIN_PAUSE_SECONDS": "3"}).start()
    try:
        assert gateway.process is not None
        assert httpx.get(gateway.url + "/health/ready", timeout=10).json()["status"] != "draining"
        gateway.process.send_signal(signal.SIGTERM)

        def draining() -> bool:
            answer = httpx.get(gateway.url + "/health/ready", timeout=10)
            return answer.status_code == 503 and answer.json()["status"] == "draining"

        await eventually(draining, timeout=2.5, interval=0.05)
        assert httpx.get(gateway.url + "/health/live", timeout=10).status_code == 200
        assert await asyncio.to_thread(gateway.process.wait, 60) == 0
    finally:
        gateway.stop()


async def test_an_upstream_is_not_ready_before_its_document_is_held(
    auth_upstream: ServerThread,
) -> None:
    # logs answers its readiness probe but serves no OpenAPI document: without the document
    # the gateway could route it by prefix only (no per-operation validation, no route
    # names), so it is not counted ready; once it serves one, it is.
    serving = {"document": False}
    logs = FastAPI(openapi_url=None)

    @logs.get("/health/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    @logs.get("/openapi.json")
    async def document() -> JSONResponse:
        if not serving["document"]:
            return JSONResponse({"detail": "not yet"}, status_code=503)
        return JSONResponse({"openapi": "3.1.0", "paths": {"/api/v1/logs/x": {"get": {}}}})

    server = ServerThread(logs).start()
    try:
        urls = {"auth": auth_upstream.url, "logs": server.url}
        settings = gateway_settings(routing=upstreams_config(**urls))
        async with running_gateway(settings) as (_, client):
            detail = (await client.get("/health/ready")).json()["failing"]["routing"]["detail"]
            assert "logs: unready (no OpenAPI document yet)" in detail
            assert "auth: ready" in detail
            serving["document"] = True

            async def logs_ready() -> bool:
                response = await client.get("/health/ready")
                failing = response.json().get("failing", {}).get("routing", {})
                return "logs: ready" in failing.get("detail", "logs: ready")

            await eventually(logs_ready)
    finally:
        server.stop()

import json

import pytest
from gateway_testkit import (
    ServerThread,
    call_and_leave,
    call_raw,
    catalog_ready,
    gateway_settings,
    recorded_as_499,
    running_gateway,
    upstreams_config,
)


def settings_for(upstream: ServerThread, **validation: object):
    return gateway_settings(
        routing=upstreams_config(logs=upstream.url),
        validation={"max_body_bytes": 4096, "max_json_bytes": 2048, **validation},
    )


async def test_body_checked_against_the_upstream_schema(upstream: ServerThread) -> None:
    async with running_gateway(settings_for(upstream)) as (app, client):
        await catalog_ready(app, "logs")
        ok = await client.post("/api/v1/logs/items", json={"name": "a", "count": 2})
        assert ok.status_code == 201 and ok.json()["name"] == "a"

        short = await client.post("/api/v1/logs/items", json={"name": "", "count": 2})
        assert short.status_code == 422
        assert short.headers["content-type"] == "application/problem+json"
        assert short.json()["detail"].startswith("name: ")
        assert short.json()["errors"][0]["loc"] == ["body", "name"]

        missing = await client.post("/api/v1/logs/items", json={"name": "a"})
        assert missing.status_code == 422 and missing.json()["detail"] == "count: Field required"

        wrong = await client.post("/api/v1/logs/items", json={"name": "a", "count": "many"})
        assert wrong.status_code == 422 and wrong.json()["errors"][0]["loc"] == ["body", "count"]
        assert "many" not in wrong.text  # submitted values are never echoed

        nested = await client.post(
            "/api/v1/logs/items", json={"name": "a", "count": 1, "tags": [1]}
        )
        assert nested.status_code == 422 and nested.json()["detail"].startswith("tags.0: ")

        empty = await client.post("/api/v1/logs/items")
        assert empty.status_code == 422


async def test_a_body_of_a_type_the_operation_does_not_take_is_415(
    upstream: ServerThread,
) -> None:
    async with running_gateway(settings_for(upstream)) as (app, client):
        await catalog_ready(app, "logs")
        # The document says POST /items takes JSON only: text/plain is refused here (it
        # is on the global list), not sent on to become the service's 422.
        text = await client.post(
            "/api/v1/logs/items", content=b"name=a", headers={"content-type": "text/plain"}
        )
        assert text.status_code == 415
        assert text.headers["content-type"] == "application/problem+json"
        assert "application/json" in text.json()["detail"]
        merge = await client.post(
            "/api/v1/logs/items",
            content=b'{"name": "a"}',
            headers={"content-type": "application/merge-patch+json"},
        )
        assert merge.status_code == 415
        ok = await client.post(
            "/api/v1/logs/items",
            content=b'{"name": "a", "count": 1}',
            headers={"content-type": "application/json; charset=utf-8"},
        )
        assert ok.status_code == 201
        # An operation whose document declares no body still goes by the global list.
        plain = await client.post(
            "/api/v1/logs/upload", content=b"abc", headers={"content-type": "text/plain"}
        )
        assert plain.status_code == 200


async def test_without_upstream_schemas_the_global_list_applies(upstream: ServerThread) -> None:
    settings = settings_for(upstream, check_upstream_schemas=False)
    async with running_gateway(settings) as (app, client):
        await catalog_ready(app, "logs")
        text = await client.post(
            "/api/v1/logs/items", content=b"name=a", headers={"content-type": "text/plain"}
        )
        assert text.status_code == 422  # the service's own answer


async def test_size_type_and_json_shape_limits(upstream: ServerThread) -> None:
    async with running_gateway(settings_for(upstream)) as (_, client):
        too_big = await client.post(
            "/api/v1/logs/upload", content=b"x" * 5000, headers={"content-type": "text/plain"}
        )
        assert too_big.status_code == 413

        async def chunked():
            for _ in range(5):
                yield b" " * 1000

        big_json = await client.post(
            "/api/v1/logs/echo", content=chunked(), headers={"content-type": "application/json"}
        )
        assert big_json.status_code == 413

        xml = await client.post(
            "/api/v1/logs/upload", content=b"<a/>", headers={"content-type": "application/xml"}
        )
        assert xml.status_code == 415
        untyped = await client.post(
            "/api/v1/logs/upload", content=b"abc", headers={"content-type": ""}
        )
        assert untyped.status_code == 415

        broken = await client.post(
            "/api/v1/logs/echo", content=b"{nope", headers={"content-type": "application/json"}
        )
        assert broken.status_code == 400

        deep = json.dumps(json.loads("[" * 40 + "]" * 40))
        too_deep = await client.post(
            "/api/v1/logs/echo", content=deep, headers={"content-type": "application/json"}
        )
        assert too_deep.status_code == 400 and "deeper" in too_deep.json()["detail"]

        fine = await client.post(
            "/api/v1/logs/upload", content=b"x" * 4000, headers={"content-type": "text/plain"}
        )
        assert fine.json() == {"received": 4000}

        many = {f"x-h{i}": "v" for i in range(120)}
        crowded = await client.get("/api/v1/logs/echo", headers=many)
        assert crowded.status_code == 431
        assert crowded.json()["type"] == "https://keelson.dev/problems/headers-too-large"
        assert crowded.json()["title"] == "Request Header Fields Too Large"
        assert crowded.json()["instance"] == "/api/v1/logs/echo"
        huge = {"x-big": "v" * 20000}
        assert (await client.get("/api/v1/logs/echo", headers=huge)).status_code == 431


@pytest.mark.parametrize(
    "raw_path",
    [
        b"/api/v1/logs/../auth/echo",
        b"/api/v1/logs/./echo",
        b"/api/v1/logs/%2e%2e/auth",
        b"/api/v1/logs/%252e%252e/auth",
        b"/api/v1/logs/a%2fb",
        b"/api/v1/logs//echo",
        b"/api/v1/logs/a%5c..%5cb",
        b"/api/v1/logs/a%00",
    ],
)
async def test_paths_that_are_not_normal_are_refused(
    upstream: ServerThread, raw_path: bytes
) -> None:
    async with running_gateway(settings_for(upstream)) as (app, _):
        status, body = await call_raw(app, "GET", raw_path)
    assert status == 400, body


async def test_normal_encoded_path_passes(upstream: ServerThread) -> None:
    async with running_gateway(settings_for(upstream)) as (app, _):
        status, body = await call_raw(app, "GET", b"/api/v1/logs/echo")
    assert status == 200 and json.loads(body)["raw_path"] == "/api/v1/logs/echo"


async def test_a_client_gone_before_its_body_arrived_is_recorded_as_499_and_not_answered(
    upstream: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    with recorded_as_499(caplog, "/api/v1/logs/items"):
        async with running_gateway(settings_for(upstream)) as (app, _):
            await catalog_ready(app, "logs")  # so the route is named by its template
            headers = [(b"content-type", b"application/json"), (b"content-length", b"100")]
            sent = await call_and_leave(app, "/api/v1/logs/items", b'{"name": ', headers)
        assert sent == []

import httpx
import pytest
from gateway_testkit import (
    ServerThread,
    call_and_leave,
    catalog_ready,
    gateway_settings,
    recorded_as_499,
    running_gateway,
    upstreams_config,
)

from gateway.plugins.encryption import EncryptionPlugin
from keelson.client import (
    CONTENT_TYPE_HEADER,
    ENCRYPTED_MEDIA_TYPE,
    SEQ_HEADER,
    SESSION_HEADER,
    SecureChannelError,
    SecureClient,
)


def settings_for(upstream: ServerThread, redis_url: str | None = None, **encryption: object):
    return gateway_settings(
        redis_url=redis_url,
        routing=upstreams_config(logs=upstream.url),
        rate_limiting={"storage": "memory"},
        encryption=encryption,
    )


def secure_client(app) -> SecureClient:
    return SecureClient("http://gateway.test", transport=httpx.ASGITransport(app=app))


async def test_encrypted_round_trip_through_the_whole_chain(upstream: ServerThread) -> None:
    async with running_gateway(settings_for(upstream)) as (app, _):
        await catalog_ready(app, "logs")
        async with secure_client(app) as client:
            created = await client.post("/api/v1/logs/items", json={"name": "n", "count": 3})
            assert created.status_code == 201
            assert created.json() == {"name": "n", "count": 3, "tags": []}
            assert created.headers["content-type"] == "application/json"
            assert created.headers["ratelimit-limit"]  # the other layers ran too

            echoed = await client.get("/api/v1/logs/echo", params={"q": "a b"})
            assert echoed.json()["query"] == "q=a+b"
            assert echoed.json()["body"] == ""
            seen = dict(echoed.json()["headers"])
            assert not any(k.startswith("x-e2e-") for k in seen)

            # validation sees the decrypted body: its 422 comes back sealed
            invalid = await client.post("/api/v1/logs/items", json={"name": "", "count": 3})
            assert invalid.status_code == 422
            assert invalid.json()["detail"].startswith("name: ")


async def test_bodies_are_opaque_on_the_wire(upstream: ServerThread) -> None:
    async with (
        running_gateway(settings_for(upstream)) as (app, raw),
        secure_client(app) as client,
    ):
        await client.handshake()
        plain = raw.build_request(
            "POST",
            "/api/v1/logs/echo",
            content=b'{"secret": "hunter2"}',
            headers={"content-type": "application/json"},
        )
        sealed = client.seal(plain, b'{"secret": "hunter2"}')
        assert b"hunter2" not in sealed.content
        response = await raw.send(sealed)
        assert response.status_code == 200
        assert response.headers["content-type"] == ENCRYPTED_MEDIA_TYPE
        assert b"hunter2" not in response.content
        assert b"secret" not in response.content


async def test_tampered_moved_and_replayed_envelopes_are_refused(upstream: ServerThread) -> None:
    async with (
        running_gateway(settings_for(upstream)) as (app, raw),
        secure_client(app) as client,
    ):
        await client.handshake()

        def sealed(path: str = "/api/v1/logs/echo") -> httpx.Request:
            plain = raw.build_request(
                "POST", path, content=b"{}", headers={"content-type": "application/json"}
            )
            return client.seal(plain, b'{"n": 1}')

        request = sealed()
        flipped = bytearray(request.content)
        flipped[-1] ^= 1
        tampered = httpx.Request(
            "POST", request.url, headers=request.headers, content=bytes(flipped)
        )
        response = await raw.send(tampered)
        assert response.status_code == 400
        assert "authentication" in response.json()["detail"]

        # the same envelope sent to another path fails: the path is bound in
        request = sealed()
        moved = httpx.Request(
            "POST",
            "http://gateway.test/api/v1/logs/upload",
            headers=request.headers,
            content=request.content,
        )
        assert (await raw.send(moved)).status_code == 400

        request = sealed()
        assert (await raw.send(request)).status_code == 200
        replayed = await raw.send(request)
        assert replayed.status_code == 400 and "replay" in replayed.json()["detail"]

        # an out-of-order (older, unused) counter is still fine
        early, late = sealed(), sealed()
        assert (await raw.send(late)).status_code == 200
        assert (await raw.send(early)).status_code == 200


async def test_expired_session_is_401_and_the_client_shakes_hands_again(
    upstream: ServerThread,
) -> None:
    async with (
        running_gateway(settings_for(upstream)) as (app, raw),
        secure_client(app) as client,
    ):
        assert (await client.get("/api/v1/logs/echo")).status_code == 200
        first_session = client.session_id
        plugin = app.state.container.get(EncryptionPlugin)
        await plugin.sessions.close()  # every session forgotten, as after expiry

        plain = raw.build_request("GET", "/api/v1/logs/echo")
        stale = await raw.send(client.seal(plain, b""))
        assert stale.status_code == 401
        assert stale.headers["x-e2e-error"] == "session-expired"

        again = await client.get("/api/v1/logs/echo")
        assert again.status_code == 200
        assert client.session_id != first_session


async def test_sessions_in_redis_serve_every_replica(
    upstream: ServerThread, redis_url: str
) -> None:
    async with (
        running_gateway(settings_for(upstream, redis_url)) as (app_a, _),
        running_gateway(settings_for(upstream, redis_url)) as (_, raw_b),
        secure_client(app_a) as client,
    ):
        await client.handshake()
        plain = raw_b.build_request("GET", "/api/v1/logs/echo")
        request = client.seal(plain, b"")
        assert (await raw_b.send(request)).status_code == 200
        transport = httpx.ASGITransport(app=app_a)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as raw_a:
            assert (await raw_a.send(request)).status_code == 400  # a replay on the other


async def test_required_paths_refuse_plain_requests(upstream: ServerThread) -> None:
    settings = settings_for(upstream, require_for=["/api/v1/logs/items"])
    async with running_gateway(settings) as (app, raw):
        assert (await raw.get("/api/v1/logs/items/1")).status_code == 400
        async with secure_client(app) as client:
            assert (await client.get("/api/v1/logs/items/1")).json() == {"id": 1}


async def test_bad_handshakes(upstream: ServerThread) -> None:
    async with running_gateway(settings_for(upstream)) as (_, raw):
        bad = await raw.post("/api/v1/handshake", json={"public_key": "AAAA"})
        assert bad.status_code == 422
    disabled = gateway_settings(
        routing=upstreams_config(logs=upstream.url), encryption={"enabled": False}
    )
    async with running_gateway(disabled) as (_, raw):
        assert (await raw.post("/api/v1/handshake", json={"public_key": "AAAA"})).status_code == 404


async def test_a_forged_response_is_detected(upstream: ServerThread) -> None:
    async with (
        running_gateway(settings_for(upstream)) as (app, _),
        secure_client(app) as client,
    ):
        await client.handshake()
        response = await client._send("GET", "/api/v1/logs/echo", b"", None, {})
        forged = httpx.Response(
            response.status_code,
            headers=response.headers,
            content=response.content[:-1] + bytes([response.content[-1] ^ 1]),
            extensions=response.extensions,
        )
        with pytest.raises(SecureChannelError):
            client._open(forged)


async def test_a_client_gone_before_its_envelope_arrived_is_recorded_as_499_and_not_answered(
    upstream: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    with recorded_as_499(caplog, "/api/v1/logs/echo"):
        async with running_gateway(settings_for(upstream)) as (app, _):
            await catalog_ready(app, "logs")  # so the route is named by its template
            async with secure_client(app) as client:
                await client.handshake()
            assert client.session_id is not None
            headers = [
                (SESSION_HEADER.encode(), client.session_id.encode()),
                (SEQ_HEADER.encode(), b"1"),
                (CONTENT_TYPE_HEADER.encode(), b"application/json"),
                (b"content-type", ENCRYPTED_MEDIA_TYPE.encode()),
                (b"content-length", b"100"),
            ]
            sent = await call_and_leave(app, "/api/v1/logs/echo", b"sealed-in-part", headers)
        assert sent == []

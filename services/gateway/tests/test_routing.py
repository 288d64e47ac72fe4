import asyncio
import logging
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from gateway_testkit import (
    ServerThread,
    call_raw,
    catalog_ready,
    gateway_settings,
    recorded_as_499,
    running_gateway,
    upstreams_config,
)
from gateway_upstream import Seen, SocketUpstream, create_upstream, ok, serving
from prometheus_client import REGISTRY

from gateway.app import create_app
from keelson_dev.embedded import free_port
from keelson_dev.testing import LiveServer, eventually


def routing(**urls: str) -> dict:
    return {"routing": upstreams_config(**urls)}


async def test_proxies_by_prefix_with_headers_rewritten(upstream: ServerThread) -> None:
    settings = gateway_settings(**routing(logs=upstream.url))
    async with running_gateway(settings) as (_, client):
        response = await client.get(
            "/api/v1/logs/echo?a=1&b=%2Fx",
            headers={
                "X-Request-ID": "req-123",
                "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "Connection": "close, x-hop",
                "X-Hop": "secret",
                "Keep-Alive": "timeout=5",
                "X-Keelson-User": "forged-admin",
                "X-Keelson-Identity": "forged.identity",
                "X-Forwarded-For": "6.6.6.6",
            },
        )
    assert response.status_code == 200
    echoed = response.json()
    seen = dict(echoed["headers"])
    assert echoed["path"] == "/api/v1/logs/echo"
    assert echoed["query"] == "a=1&b=%2Fx"
    assert seen["x-request-id"] == "req-123"
    _version, trace_id, span, flags = seen["traceparent"].split("-")
    assert trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert span != "b7ad6b7169203331" and len(span) == 16 and flags == "01"
    assert "x-hop" not in seen and "keep-alive" not in seen
    assert not [name for name in seen if name.startswith("x-keelson-")]
    assert (
        seen["x-forwarded-for"] == "127.0.0.1"
    )  # no trusted proxies: the client's XFF is not kept
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == "gateway.test"
    # The client's own headers go as they are; the proxy's HTTP client adds none of its own.
    assert seen["user-agent"].startswith("python-httpx/")
    assert response.headers["x-upstream"] == "yes"
    assert response.headers["x-request-id"] == "req-123"
    assert "upstream-server" not in response.headers.get_list("server")
    assert len(response.headers.get_list("date")) <= 1


async def test_hop_by_hop_headers_are_dropped_and_repeated_ones_kept(
    upstream: ServerThread,
) -> None:
    # Without forged identity headers: the usual request, whose headers the layers keep as sent.
    settings = gateway_settings(**routing(logs=upstream.url))
    hop = {"Connection": "x-hop", "X-Hop": "secret", "Keep-Alive": "timeout=5", "TE": "trailers"}
    async with running_gateway(settings) as (_, client):
        single = await client.get(
            "/api/v1/logs/echo",
            headers={
                **hop,
                "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
                "X-Kept": "yes",
            },
        )
        repeated = await client.get(
            "/api/v1/logs/echo",
            headers=[*hop.items(), ("X-Tag", "a"), ("X-Tag", "b"), ("traceparent", "short")],
        )
        # Two Connection headers: the names of both are hop-by-hop, not only the last's.
        two = await client.get(
            "/api/v1/logs/echo",
            headers=[("Connection", "x-hop"), ("X-Hop", "secret"), ("Connection", "keep-alive")],
        )
    for response in (single, repeated, two):
        assert response.status_code == 200
        names = [name for name, _ in response.json()["headers"]]
        assert not {"connection", "x-hop", "keep-alive", "te"} & set(names)
        assert names.count("traceparent") == 1 and names.count("x-forwarded-host") == 1
    seen = dict(single.json()["headers"])
    assert seen["x-kept"] == "yes"
    assert seen["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
    assert seen["traceparent"].endswith("-00")  # the client's sampling decision goes on
    tags = [value for name, value in repeated.json()["headers"] if name == "x-tag"]
    assert tags == ["a", "b"]
    assert dict(repeated.json()["headers"])["traceparent"].endswith("-01")  # a new trace


async def test_an_answer_with_repeated_headers_is_relayed_whole() -> None:
    origin = ""

    async def answer(seen: Seen) -> bytes:
        return ok(
            b"{}",
            "Connection: x-hop",
            "X-Hop: secret",
            "Connection: keep-alive",
            "Set-Cookie: a=1",
            "Set-Cookie: b=2",
            f"Location: {origin}/api/v1/logs/next",
            "Server: upstream-server",
        )

    async with (
        serving(SocketUpstream(answer)) as url,
        running_gateway(gateway_settings(**routing(logs=url))) as (_, client),
    ):
        origin = url
        response = await client.get("/api/v1/logs/echo")
    assert response.status_code == 200
    assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert response.headers["location"] == "/api/v1/logs/next"
    assert "x-hop" not in response.headers  # named by one of two Connection headers
    assert "upstream-server" not in response.headers.get_list("server")
    assert "connection" not in response.headers


async def test_unknown_prefix_is_not_proxied(upstream: ServerThread) -> None:
    async with running_gateway(gateway_settings(**routing(logs=upstream.url))) as (_, client):
        assert (await client.get("/api/v1/logsx/echo")).status_code == 404
        assert (await client.get("/api/v1/nothing")).status_code == 404


async def test_streams_large_bodies_both_ways(upstream: ServerThread) -> None:
    # Validation reads a chunked body whole to enforce its size limit; without it, the
    # proxy streams both ways.
    settings = gateway_settings(**routing(logs=upstream.url), validation={"enabled": False})
    async with running_gateway(settings) as (app, client):
        assert "validation" not in app.state.pipeline.layers
        async with client.stream("GET", "/api/v1/logs/stream?chunks=64&size=16384") as response:
            total = 0
            async for chunk in response.aiter_bytes():
                total += len(chunk)
        assert total == 64 * 16384

        async def body():
            for _ in range(40):
                yield b"x" * 65536

        response = await client.post(
            "/api/v1/logs/upload", content=body(), headers={"content-type": "text/plain"}
        )
        assert response.json() == {"received": 40 * 65536}


async def test_headers_the_upstream_names_in_connection_are_not_relayed() -> None:
    async def answer(seen: Seen) -> bytes:
        hop = ("Connection: Keep-Alive, X-Hop", "X-Hop: secret", "Keep-Alive: timeout=5")
        return ok(b"{}", *hop, "X-Kept: yes")

    async with (
        serving(SocketUpstream(answer)) as url,
        running_gateway(gateway_settings(**routing(logs=url))) as (_, client),
    ):
        response = await client.get("/api/v1/logs/echo")
    assert response.status_code == 200
    assert response.headers["x-kept"] == "yes"
    assert not {"connection", "x-hop", "keep-alive"} & set(response.headers)


async def test_slow_upstream_times_out_with_504(upstream: ServerThread) -> None:
    config = upstreams_config(logs=upstream.url)
    config["upstreams"]["logs"]["timeout_seconds"] = 0.2
    async with running_gateway(gateway_settings(routing=config)) as (_, client):
        response = await client.get("/api/v1/logs/slow?seconds=2")
        assert response.status_code == 504
        assert response.headers["content-type"] == "application/problem+json"
        assert "Traceback" not in response.text
        problem = response.json()
        assert problem["type"] == "https://keelson.dev/problems/gateway-timeout"
        assert problem["title"] == "Gateway Timeout"
        assert problem["detail"] == "The logs service did not answer in time."
        assert problem["request_id"] == response.headers["x-request-id"]


@asynccontextmanager
async def never_reading_upstream(*, reset: bool = False) -> AsyncIterator[str]:
    """An upstream that accepts connections and never reads from them; yields its URL.

    With `reset`, it resets each connection (RST) as soon as the request starts arriving.
    """
    loop = asyncio.get_running_loop()
    listener = socket.socket()
    # A small receive window (the accepted socket inherits it) fills after a few KB, and an
    # Ethernet MSS instead of loopback's 64 KB sizes the gateway's send buffer as on a real
    # network (about 64 KB, not 4 MB), so a 1 MB body no longer fits in the kernel's buffers.
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1460)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    accepted: list[socket.socket] = []

    async def accept_and_never_read() -> None:
        while True:
            connection = (await loop.sock_accept(listener))[0]
            accepted.append(connection)
            if reset:
                await loop.sock_recv(connection, 1)
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                connection.close()

    acceptor = asyncio.create_task(accept_and_never_read())
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        acceptor.cancel()
        for connection in (*accepted, listener):
            connection.close()


async def upload_through_gateway(
    url: str, content: bytes | AsyncIterator[bytes], **logs_upstream: object
) -> httpx.Response:
    """POST `content` through a gateway to a logs upstream at `url`, with its options given."""
    config = upstreams_config(logs=url)
    config["upstreams"]["logs"].update(logs_upstream)
    settings = gateway_settings(routing=config, validation={"enabled": False})
    async with running_gateway(settings) as (_, client):
        upload = client.post("/api/v1/logs/upload", content=content)
        return await asyncio.wait_for(upload, timeout=10)  # a guard against a hang


async def test_a_streamed_body_an_upstream_stops_reading_times_out_with_504() -> None:
    async def endless() -> AsyncIterator[bytes]:
        for _ in range(1024):  # 64 MB: far past every buffer between gateway and upstream
            yield b"x" * 65536

    async with never_reading_upstream() as url:
        response = await upload_through_gateway(url, endless(), timeout_seconds=0.2)
    assert response.status_code == 504
    assert response.headers["content-type"] == "application/problem+json"


async def test_a_streamed_body_the_client_stops_sending_gets_408(upstream: ServerThread) -> None:
    quiet = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield b"x" * 65536
        await quiet.wait()  # the client goes quiet with its request half sent
        yield b"never"

    try:
        response = await upload_through_gateway(upstream.url, stalls(), timeout_seconds=0.2)
    finally:
        quiet.set()
    assert response.status_code == 408  # the client's silence: no 504, nothing against the upstream
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == "https://keelson.dev/problems/request-timeout"
    assert response.json()["title"] == "Request Timeout"


async def test_a_whole_body_an_upstream_stops_reading_times_out_with_504() -> None:
    body = b"x" * (1024 * 1024)  # the most sent in one piece: past the buffers on the way
    async with never_reading_upstream() as url:
        response = await upload_through_gateway(url, body, timeout_seconds=0.2)
    assert response.status_code == 504
    assert response.headers["content-type"] == "application/problem+json"


async def test_an_upstream_that_resets_while_taking_a_body_is_a_502() -> None:
    body = b"x" * (1024 * 1024)  # more than the buffers take: the gateway waits on a drain
    async with never_reading_upstream(reset=True) as url:
        response = await upload_through_gateway(url, body)
    assert response.status_code == 502
    assert response.headers["content-type"] == "application/problem+json"


async def test_idempotent_requests_are_retried_others_are_not(upstream: ServerThread) -> None:
    app = upstream.app
    async with running_gateway(gateway_settings(**routing(logs=upstream.url))) as (_, client):
        app.state.fail_next, app.state.calls = 2, 0
        response = await client.get("/api/v1/logs/flaky")
        assert response.status_code == 200
        assert app.state.calls == 3

        app.state.fail_next, app.state.calls = 1, 0
        response = await client.post("/api/v1/logs/echo", json={})
        assert app.state.calls == 1


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_unreachable_upstream_is_503_then_circuit_opens_and_recovers(method: str) -> None:
    # A refused connection (an upstream killed and not yet restarted) is an unavailable
    # upstream, not a bad answer: 503 with Retry-After from the first request, counted
    # toward the breaker, and sent again first when the method allows (retries=1 here).
    port = free_port()
    config = upstreams_config(logs=f"http://127.0.0.1:{port}")
    config["upstreams"]["logs"].update(failure_threshold=3, reset_timeout_seconds=0.5, retries=1)
    labels = {"upstream": "logs", "method": method, "status": "unreachable"}
    before = REGISTRY.get_sample_value("gateway_upstream_requests_total", labels) or 0.0
    retries = {"upstream": "logs"}
    retried = REGISTRY.get_sample_value("gateway_upstream_retries_total", retries) or 0.0
    async with running_gateway(gateway_settings(routing=config)) as (_, client):
        for _ in range(3):
            failed = await client.request(method, "/api/v1/logs/echo", json={})
            assert failed.status_code == 503
            assert failed.headers["content-type"] == "application/problem+json"
            assert failed.headers["retry-after"] == "1"
            assert failed.json()["type"] == "https://keelson.dev/problems/unavailable"
            assert failed.json()["title"] == "Service Unavailable"
            assert "logs" in failed.json()["detail"]
        after = REGISTRY.get_sample_value("gateway_upstream_requests_total", labels)
        assert after == before + 3  # each tried the upstream; the next meets the open circuit
        sent_again = REGISTRY.get_sample_value("gateway_upstream_retries_total", retries) or 0.0
        assert sent_again - retried == (3 if method == "GET" else 0)
        refused = await client.request(method, "/api/v1/logs/echo", json={})
        assert refused.status_code == 503
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["type"] == "https://keelson.dev/problems/unavailable"
        assert refused.json()["title"] == "Service Unavailable"
        metrics = (await client.get("/metrics")).text
        assert 'gateway_circuit_state{upstream="logs"} 2.0' in metrics

        server = ServerThread(create_upstream(), port=port).start()
        try:

            async def recovered() -> bool:
                return (await client.get("/api/v1/logs/echo")).status_code == 200

            await eventually(recovered)
            metrics = (await client.get("/metrics")).text
            assert 'gateway_circuit_state{upstream="logs"} 0.0' in metrics
        finally:
            server.stop()


async def test_an_open_circuit_closes_once_the_upstream_is_back_not_after_its_period() -> None:
    port = free_port()
    config = upstreams_config(logs=f"http://127.0.0.1:{port}")
    # An open period far longer than the poll below: only the health check can end it.
    config["upstreams"]["logs"].update(failure_threshold=2, reset_timeout_seconds=30, retries=0)
    async with running_gateway(gateway_settings(routing=config)) as (_, client):
        for _ in range(2):
            assert (await client.get("/api/v1/logs/echo")).status_code == 503  # refused
        assert (await client.get("/api/v1/logs/echo")).status_code == 503  # open
        server = ServerThread(create_upstream(), port=port).start()
        try:

            async def recovered() -> bool:
                return (await client.get("/api/v1/logs/echo")).status_code == 200

            await eventually(recovered, timeout=10, interval=0.1)
        finally:
            server.stop()


async def test_concurrent_requests_share_the_pool(upstream: ServerThread) -> None:
    async with running_gateway(gateway_settings(**routing(logs=upstream.url))) as (_, client):
        responses = await asyncio.gather(
            *(client.get(f"/api/v1/logs/items/{i}") for i in range(50))
        )
    assert [r.json()["id"] for r in responses] == list(range(50))


@pytest.mark.parametrize("path", ["/metrics", "/health/live"])
async def test_local_endpoints_still_answer(upstream: ServerThread, path: str) -> None:
    async with running_gateway(gateway_settings(**routing(logs=upstream.url))) as (_, client):
        assert (await client.get(path)).status_code == 200


async def test_malformed_content_length_is_400_even_without_validation(
    upstream: ServerThread,
) -> None:
    settings = gateway_settings(**routing(logs=upstream.url), validation={"enabled": False})
    async with running_gateway(settings) as (app, _):
        status, body = await call_raw(
            app, "POST", b"/api/v1/logs/echo", b"{}", headers=[(b"content-length", b"2x")]
        )
    assert status == 400, body


@pytest.mark.parametrize(
    "answer",
    [
        b"SMTP upstream-secret ready\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nx-big: upstream-secret" + b"s" * 9000 + b"\r\n\r\n",
    ],
    ids=["garbage-status-line", "header-over-8k"],
)
async def test_an_answer_the_parser_refuses_is_a_502_failure_not_retried(
    answer: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async def refused(seen: Seen) -> bytes:
        return answer

    upstream = SocketUpstream(refused)
    errors = {"upstream": "logs", "method": "GET", "status": "error"}
    before = REGISTRY.get_sample_value("gateway_upstream_requests_total", errors) or 0.0
    caplog.set_level(logging.WARNING)
    async with serving(upstream) as url:
        config = upstreams_config(logs=url)
        config["upstreams"]["logs"].update(failure_threshold=2, retries=2)
        async with running_gateway(gateway_settings(routing=config)) as (_, client):
            for _ in range(2):
                response = await client.get("/api/v1/logs/echo")
                assert response.status_code == 502
                assert response.headers["content-type"] == "application/problem+json"
                assert response.json()["title"] == "Bad Gateway"
                assert "logs" in response.json()["detail"]
                assert "upstream-secret" not in response.text
            assert (await client.get("/api/v1/logs/echo")).status_code == 503  # circuit open
    proxied = [seen for seen in upstream.requests if seen.target.startswith("/api/")]
    assert len(proxied) == 2  # delivered: never sent again
    after = REGISTRY.get_sample_value("gateway_upstream_requests_total", errors)
    assert after == before + 2
    warnings = [r for r in caplog.records if r.name == "gateway.proxy"]
    assert [r.levelno for r in warnings] == [logging.WARNING] * 2
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "upstream-secret" not in caplog.text


async def test_a_client_gone_before_its_body_arrived_is_recorded_as_499(
    upstream: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    settings = gateway_settings(**routing(logs=upstream.url), validation={"enabled": False})
    labels = {
        "method": "POST",
        "route": "/api/v1/logs/upload",
        "service": "gateway",
        "status": "499",
    }
    before = REGISTRY.get_sample_value("http_requests_total", labels) or 0.0
    app = create_app(settings)
    gateway = ServerThread(app, lifespan="on").start()
    try:
        await catalog_ready(app, "logs")  # so the route is named by its template
        with socket.create_connection(("127.0.0.1", gateway.port)) as client:
            client.sendall(
                b"POST /api/v1/logs/upload HTTP/1.1\r\nHost: gateway.test\r\n"
                b"Content-Type: application/octet-stream\r\nContent-Length: 100\r\n\r\n" + b"x" * 10
            )

        def access_record() -> logging.LogRecord | None:
            posts = [r for r in caplog.records if r.name == "gateway.access" and r.method == "POST"]
            return posts[0] if posts else None

        record = await eventually(access_record)
    finally:
        gateway.stop()
    assert (record.status, record.route) == (499, "/api/v1/logs/upload")
    await eventually(lambda: REGISTRY.get_sample_value("http_requests_total", labels) == before + 1)


@pytest.mark.parametrize("size", [11, 1024 * 1024], ids=["answer-whole", "answer-half-read"])
async def test_a_client_gone_while_the_upstream_answers_is_recorded_as_499(
    size: int, caplog: pytest.LogCaptureFixture
) -> None:
    """The proxy learns the client left (http.disconnect) once the upstream answers:
    nothing is relayed, and the upstream connection goes back healthy or is closed (a
    half-read one with the rest of its answer still on the wire must not be used again)."""
    answer_now = asyncio.Event()

    async def answer(seen: Seen) -> bytes:
        if seen.target == "/api/v1/logs/held":
            await answer_now.wait()
            return ok(b"x" * size)
        if seen.target == "/api/v1/logs/echo":
            return ok()
        return b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"

    upstream = SocketUpstream(answer)
    async with serving(upstream) as url:
        config = upstreams_config(logs=url)
        config["pool_limit"] = 1  # a slot the dropped answer kept would stall the next request
        settings = gateway_settings(routing=config, validation={"enabled": False})
        with LiveServer(create_app(settings)) as gateway:
            server = gateway.server
            with recorded_as_499(caplog, "/api/v1/logs/{path}"):
                with socket.create_connection(("127.0.0.1", gateway.port)) as client:
                    client.sendall(
                        b"POST /api/v1/logs/held HTTP/1.1\r\nHost: gateway.test\r\n"
                        b"Content-Length: 2\r\n\r\n{}"
                    )
                    await eventually(lambda: [s for s in upstream.requests if "held" in s.target])
                await eventually(lambda: not server.server_state.connections)  # it saw the close
                answer_now.set()
                await eventually(lambda: not server.server_state.tasks)  # recorded and counted
            async with httpx.AsyncClient(base_url=gateway.url) as http:
                response = await http.post("/api/v1/logs/echo", content=b"{}", timeout=10)
        await eventually(lambda: upstream.open_now == 0)  # the stopped gateway closed its pool
    assert (response.status_code, response.content) == (200, b'{"ok":true}')


async def test_a_client_gone_during_a_streamed_answer_stops_the_relay(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The rest of a large answer is not read for nobody: the relay stops at the next part
    and the request is recorded as 499."""
    more = asyncio.Event()
    sent_rest = asyncio.Event()
    first = 64 * 1024
    total = 4 * 1024 * 1024  # well over what the proxy buffers: it streams

    async def streaming(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            while not head.startswith(b"POST /api/v1/logs/big "):  # the gateway's own probes
                writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                head = await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)  # the request's body, "{}"
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % total)
            writer.write(b"x" * first)
            await writer.drain()
            await more.wait()
            writer.write(b"y" * first)  # one more part: the relay's next look at the client
            await writer.drain()
            sent_rest.set()
            await reader.read()  # until the gateway closes this connection
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(streaming, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        settings = gateway_settings(
            routing=upstreams_config(logs=url), validation={"enabled": False}
        )
        with LiveServer(create_app(settings)) as gateway:
            state = gateway.server.server_state
            with recorded_as_499(caplog, "/api/v1/logs/{path}"):
                # The client on this loop, which also serves the upstream: no blocking calls.
                reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
                writer.write(
                    b"POST /api/v1/logs/big HTTP/1.1\r\nHost: gateway.test\r\n"
                    b"Content-Length: 2\r\n\r\n{}"
                )
                assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 OK")
                assert await reader.readexactly(first) == b"x" * first
                writer.close()
                await writer.wait_closed()
                await eventually(lambda: not state.connections)  # it saw the close
                more.set()
                await eventually(sent_rest.is_set)
                await eventually(lambda: not state.tasks)  # recorded and counted
    finally:
        server.close()
        await server.wait_closed()


async def test_redirects_to_the_upstream_point_at_the_gateway_instead() -> None:
    from fastapi import FastAPI, Request
    from fastapi.responses import RedirectResponse, Response

    app = FastAPI()

    @app.get("/api/v1/logs/items")  # FastAPI redirects "/api/v1/logs/items/" here, absolute
    async def items() -> dict[str, list[int]]:
        return {"items": []}

    @app.get("/api/v1/logs/moved")
    async def moved(request: Request) -> Response:
        answer = RedirectResponse(str(request.url_for("items")) + "?page=2", status_code=307)
        answer.headers["content-location"] = str(request.base_url) + "api/v1/logs/here"
        return answer

    @app.get("/api/v1/logs/elsewhere")
    async def elsewhere() -> Response:
        return RedirectResponse("https://example.org/docs", status_code=302)

    server = ServerThread(app).start()
    try:
        config = upstreams_config(logs=server.url)
        async with running_gateway(gateway_settings(routing=config)) as (_, client):
            slash = await client.get("/api/v1/logs/items/")
            assert slash.status_code == 307
            assert slash.headers["location"] == "/api/v1/logs/items"
            moved_answer = await client.get("/api/v1/logs/moved")
            assert moved_answer.headers["location"] == "/api/v1/logs/items?page=2"
            assert moved_answer.headers["content-location"] == "/api/v1/logs/here"
            away = await client.get("/api/v1/logs/elsewhere")
            assert away.headers["location"] == "https://example.org/docs"
            for answer in (slash, moved_answer):
                assert server.url.split("://")[1] not in str(answer.headers)
    finally:
        server.stop()

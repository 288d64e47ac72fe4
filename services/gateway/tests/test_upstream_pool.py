"""The proxy's upstream connections against a real socket server whose every move is seen."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from gateway_upstream import Seen, SocketUpstream, ok, serving

from gateway.transport import (
    ConnectTimeout,
    ReadTimeout,
    RequestBodyStalled,
    UpstreamDisconnected,
    UpstreamUnreachable,
)
from gateway.upstream_pool import UpstreamPool
from keelson_dev.embedded import free_port
from keelson_dev.testing import eventually


async def answer_ok(seen: Seen) -> bytes:
    return ok(b"HEAD" if seen.method != "HEAD" else b"")


@asynccontextmanager
async def running(
    answer: Callable[[Seen], Awaitable[bytes | None]] = answer_ok, **options: float
) -> AsyncIterator[tuple[SocketUpstream, UpstreamPool]]:
    upstream = SocketUpstream(answer)
    settings: dict[str, float] = {
        "limit": 8,
        "keepalive_seconds": 30,
        "connect_timeout": 2,
        "read_timeout": 5,
        **options,
    }
    async with serving(upstream) as url:
        pool = UpstreamPool(
            url,
            limit=int(settings["limit"]),
            keepalive_seconds=settings["keepalive_seconds"],
            connect_timeout=settings["connect_timeout"],
            read_timeout=settings["read_timeout"],
        )
        try:
            yield upstream, pool
        finally:
            await pool.close()


@asynccontextmanager
async def pool_on(
    serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    *,
    read_timeout: float,
) -> AsyncIterator[UpstreamPool]:
    """A one-connection pool to an upstream that `serve` plays by hand, on this loop."""
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool(
        f"http://127.0.0.1:{port}",
        limit=1,
        keepalive_seconds=30,
        connect_timeout=2,
        read_timeout=read_timeout,
    )
    try:
        yield pool
    finally:
        await pool.close()
        server.close()
        await server.wait_closed()


def answering(
    answer: bytes,
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """An upstream played by hand for `pool_on`: `answer` to the first request, whole, then
    the connection held until the pool closes it."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        try:
            await writer.drain()
            await reader.read()  # until the pool closes the connection
        finally:
            writer.close()

    return serve


async def fetch(pool: UpstreamPool, method: str = "GET", body: object = None) -> tuple[int, bytes]:
    response = await pool.request(method, b"/api/v1/x?q=1", [(b"accept", b"*/*")], body)  # type: ignore[arg-type]
    try:
        return response.status, await response.read()
    finally:
        response.release()


async def test_answers_come_back_and_the_connection_is_kept_alive() -> None:
    async with running() as (upstream, pool):
        assert await fetch(pool) == (200, b"HEAD")
        assert await fetch(pool, "POST", b'{"a":1}') == (200, b"HEAD")
        assert upstream.connections == 1
        first, second = upstream.requests
        assert (first.method, first.target) == ("GET", "/api/v1/x?q=1")
        assert first.headers["host"] == f"127.0.0.1:{pool.port}"
        assert "content-length" not in first.headers  # a GET without a body says nothing
        assert second.body == b'{"a":1}' and second.headers["content-length"] == "7"


async def test_header_names_come_lower_case_and_frame_the_answer_in_any_case() -> None:
    async def answer(seen: Seen) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Upstream-Name: Kept\r\n\r\nhi"

    async with running(answer) as (upstream, pool):
        for _ in range(2):
            response = await pool.request("GET", b"/x", [])
            try:
                assert response.content_length == 2
                assert list(response.raw_headers) == [
                    (b"content-length", b"2"),
                    (b"x-upstream-name", b"Kept"),
                ]
                assert await response.read() == b"hi"
            finally:
                response.release()
        assert upstream.connections == 1  # framed by its Content-Length, so kept alive


async def test_an_answer_nobody_asked_for_adds_nothing_to_the_one_before_it() -> None:
    """Sent by the upstream in one write: the answer, then a second one (an upstream that
    answers twice, or one split by a header injection). Holds: the first answer's headers
    are its own; none of the second's (a `Set-Cookie`) reaches what the proxy relays."""
    first = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nhi"
    second = b"HTTP/1.1 200 OK\r\nSet-Cookie: evil=1\r\nContent-Length: 0\r\n\r\n"
    async with pool_on(answering(first + second), read_timeout=5) as pool:
        response = await pool.request("GET", b"/x", [])
        try:
            assert list(response.raw_headers) == [(b"content-length", b"2"), (b"x-a", b"1")]
            assert await response.read() == b"hi"
        finally:
            response.release()


async def test_a_streamed_body_without_length_goes_chunked() -> None:
    async def parts() -> AsyncIterator[bytes]:
        for part in (b"one,", b"two,", b"three"):
            yield part

    async with running() as (upstream, pool):
        assert (await fetch(pool, "POST", parts()))[0] == 200
        assert upstream.requests[0].headers["transfer-encoding"] == "chunked"
        assert upstream.requests[0].body == b"one,two,three"


async def test_head_answers_have_no_body_and_keep_the_connection() -> None:
    async def head(seen: Seen) -> bytes:
        return ok(b"x" * 10)[:-10] if seen.method == "HEAD" else ok()

    async with running(head) as (upstream, pool):
        assert await fetch(pool, "HEAD") == (200, b"")
        assert await fetch(pool) == (200, b'{"ok":true}')
        assert upstream.connections == 1


async def test_a_stream_of_many_tiny_chunks_read_late_leaves_the_connection_usable() -> None:
    """Many chunks buffered unread come out whole, and the connection carries the next
    answer."""
    tiny = b"".join(b"1\r\nx\r\n" for _ in range(16_385)) + b"0\r\n\r\n"

    async def chunky(seen: Seen) -> bytes:
        if seen.target == "/many":
            return b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + tiny
        return ok(b"ok")

    async with running(chunky, read_timeout=2) as (upstream, pool):
        response = await pool.request("GET", b"/many", [], None)
        try:
            assert await response.read() == b"x" * 16_385
        finally:
            response.release()
        after = await pool.request("GET", b"/after", [], None)
        try:
            assert await after.read() == b"ok"
        finally:
            after.release()
        assert upstream.connections == 1


async def test_an_interim_100_continue_is_skipped() -> None:
    async def continuing(seen: Seen) -> bytes:
        return b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"final")

    async with running(continuing) as (upstream, pool):
        assert await fetch(pool, "POST", b"{}") == (200, b"final")
        assert await fetch(pool) == (200, b"final")
        assert upstream.connections == 1


async def test_silence_after_100_continue_still_times_out() -> None:
    async def stalls(seen: Seen) -> bytes | None:
        return b"HTTP/1.1 100 Continue\r\n\r\n"  # and then nothing

    async with running(stalls, read_timeout=0.2) as (_, pool):
        with pytest.raises(ReadTimeout):  # not the guard's TimeoutError
            await asyncio.wait_for(fetch(pool, "POST", b"{}"), timeout=10)


async def test_a_body_that_ends_when_the_upstream_closes_arrives_whole() -> None:
    async def unframed(seen: Seen) -> bytes:
        return b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it"

    async with running(unframed) as (_, pool):
        assert await fetch(pool) == (200, b"all of it")


async def test_a_close_crossing_a_request_on_a_reused_connection_is_retried_once() -> None:
    async def drops_second(seen: Seen) -> bytes | None:
        # The second request on a connection meets the upstream's idle close.
        if sum(r.connection == seen.connection for r in upstream_ref[0].requests) == 2:
            return None
        return ok(b"fine")

    upstream_ref: list[SocketUpstream] = []
    async with running(drops_second) as (upstream, pool):
        upstream_ref.append(upstream)
        assert await fetch(pool) == (200, b"fine")
        assert await fetch(pool) == (200, b"fine")  # GET: sent again on a new connection
        assert upstream.connections == 2
        with pytest.raises(UpstreamDisconnected):
            await fetch(pool, "POST", b"{}")  # not idempotent: the upstream may have acted


async def test_connection_close_and_unread_bodies_are_not_reused() -> None:
    async def closing(seen: Seen) -> bytes:
        if seen.target.endswith("close"):
            return ok(b"bye", "connection: close")
        if seen.target.endswith("big"):  # half the body now, the rest never
            return b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"x" * 50
        return ok()

    async with running(closing) as (upstream, pool):
        response = await pool.request("GET", b"/close", [], None)
        response.release()
        assert (await fetch(pool))[0] == 200
        unread = await pool.request("GET", b"/big", [], None)
        unread.release()  # its body never read: the connection cannot carry another answer
        assert (await fetch(pool))[0] == 200
        assert upstream.connections == 3


async def test_an_idle_connection_the_upstream_closed_is_replaced_for_any_method() -> None:
    async def once(seen: Seen) -> bytes:
        return ok(b"done", "connection: keep-alive")

    async with running(once) as (upstream, pool):
        assert (await fetch(pool))[0] == 200
        # The upstream drops the idle connection, as uvicorn does after its keep-alive time.
        assert pool.idle == 1
        upstream.writers[0].close()
        await eventually(lambda: pool.idle == 0)
        for method in ("POST", "GET"):
            assert await fetch(pool, method, b"{}") == (200, b"done")
        assert upstream.connections == 2


async def test_idle_connections_older_than_keepalive_are_not_used() -> None:
    async with running(keepalive_seconds=0.000_001) as (upstream, pool):
        await fetch(pool)
        await fetch(pool)
        assert upstream.connections == 2


async def test_a_silent_upstream_times_out_and_frees_its_slot() -> None:
    release = asyncio.Event()

    async def silent(seen: Seen) -> bytes | None:
        if seen.target.startswith("/api"):
            await release.wait()
            return None
        return ok()

    async with running(silent, read_timeout=0.2, limit=1) as (_, pool):
        with pytest.raises(TimeoutError):
            await fetch(pool)
        release.set()
        # The one slot is free again, and the timed-out connection was not pooled.
        response = await pool.request("GET", b"/later", [], None)
        assert response.status == 200
        response.release()


async def test_an_upstream_that_hangs_up_or_is_down_raises_upstream_errors() -> None:
    async def hang_up(seen: Seen) -> None:
        return None

    async with running(hang_up) as (_, pool):
        with pytest.raises(UpstreamDisconnected):
            await fetch(pool)
    down = UpstreamPool(
        f"http://127.0.0.1:{free_port()}",
        limit=1,
        keepalive_seconds=1,
        connect_timeout=2,
        read_timeout=1,
    )
    with pytest.raises(UpstreamUnreachable):
        await fetch(down)
    with pytest.raises(UpstreamUnreachable):  # and its one slot was given back
        await fetch(down)


async def test_at_most_limit_connections_are_open() -> None:
    gate = asyncio.Event()

    async def slow(seen: Seen) -> bytes:
        await gate.wait()
        return ok()

    async with running(slow, limit=2) as (upstream, pool):
        calls = [asyncio.create_task(fetch(pool)) for _ in range(6)]
        await eventually(lambda: len(upstream.requests) == 2)
        assert len(upstream.requests) == 2  # the others wait for a slot
        gate.set()
        assert [status for status, _ in await asyncio.gather(*calls)] == [200] * 6
        assert upstream.most_open == 2


async def test_a_wait_for_a_slot_ends_at_connect_timeout_and_no_slot_is_lost() -> None:
    gate = asyncio.Event()

    async def slow(seen: Seen) -> bytes:
        await gate.wait()
        return ok()

    async with running(slow, limit=1, connect_timeout=0.3) as (upstream, pool):
        first = asyncio.create_task(fetch(pool))
        await eventually(lambda: len(upstream.requests) == 1)
        with pytest.raises(ConnectTimeout):
            await fetch(pool)  # the one slot stays taken past connect_timeout
        assert pool.waiting == 0  # the one that gave up left nothing behind
        abandoned = asyncio.create_task(fetch(pool))
        await eventually(lambda: pool.waiting == 1)  # it waits
        abandoned.cancel()
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        assert pool.waiting == 0
        queued = asyncio.create_task(fetch(pool))
        await eventually(lambda: pool.waiting == 1)
        gate.set()
        assert await first == (200, b'{"ok":true}')
        assert (await queued)[0] == 200
        assert pool.free_slots == 1 and pool.waiting == 0


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        (b"/x", [(b"x-evil", b"a\r\nx-injected: 1")]),
        (b"/x", [(b"x-evil", b"a\nx-injected: 1")]),
        (b"/x", [(b"x-evil", b"a\rb")]),
        (b"/x", [(b"x-evil\r\nx-injected", b"1")]),
        (b"/x HTTP/1.1\r\nx-injected: 1\r\n\r\nGET /y", []),
    ],
)
async def test_a_line_break_inside_the_target_or_a_header_is_refused(
    target: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    async with running() as (upstream, pool):
        with pytest.raises(ValueError):
            await pool.request("GET", target, headers, None)
        assert upstream.requests == []
        assert await fetch(pool) == (200, b"HEAD")


async def test_a_streamed_body_of_known_length_goes_with_content_length() -> None:
    async def parts() -> AsyncIterator[bytes]:
        for part in (b"one,", b"two,", b"three"):
            yield part

    async with running() as (upstream, pool):
        response = await pool.request(
            "PUT", b"/x", [(b"content-type", b"text/plain")], parts(), length=13
        )
        response.release()
        assert response.status == 200
        seen = upstream.requests[0]
        assert seen.headers["content-length"] == "13"
        assert "transfer-encoding" not in seen.headers
        assert seen.body == b"one,two,three"


async def test_an_empty_body_is_framed_by_the_method() -> None:
    async with running() as (upstream, pool):
        assert await fetch(pool, "POST", b"") == (200, b"HEAD")
        assert await fetch(pool, "DELETE", b"") == (200, b"HEAD")
        post, delete = upstream.requests
        assert post.headers["content-length"] == "0"  # a POST always says how long
        assert "content-length" not in delete.headers  # a DELETE without a body says nothing


async def test_a_body_that_stalls_halfway_times_out_and_its_connection_is_dropped() -> None:
    async def stalls(seen: Seen) -> bytes:
        if seen.target.startswith("/api"):
            return b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"x" * 10  # and no more
        return ok()

    async with running(stalls, read_timeout=0.2) as (upstream, pool):
        response = await pool.request("GET", b"/api/v1/x", [], None)
        assert response.status == 200
        try:
            # The pool's kind of TimeoutError: the read timed out, not the guard around it.
            with pytest.raises(ReadTimeout):
                await asyncio.wait_for(response.read(), timeout=10)
        finally:
            response.release()
        later = await pool.request("GET", b"/later", [], None)
        assert (later.status, await later.read()) == (200, b'{"ok":true}')
        later.release()
        assert upstream.connections == 2  # the stalled one was not used again


async def test_an_answer_that_keeps_coming_is_not_cut_off_by_the_read_timeout() -> None:
    """The timeout is on the silence between two reads, not on the whole answer."""
    pieces = 40

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % pieces)
        for _ in range(pieces):  # 2 s in all, more than the read timeout, 50 ms apart
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.close()

    async with pool_on(trickle, read_timeout=1.5) as pool:
        assert await fetch(pool) == (200, b"x" * pieces)


async def test_a_reader_slower_than_the_timeout_is_not_taken_for_a_silent_upstream() -> None:
    """While flow control holds the upstream back, the silence is the reader's."""
    size = 4 * 1024 * 1024  # more than the read buffers hold: reading pauses

    flood = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size + b"x" * size
    async with pool_on(answering(flood), read_timeout=0.3) as pool:
        response = await pool.request("GET", b"/big", [], None)
        try:
            await asyncio.sleep(1.0)  # the reader's own pace: three read timeouts
            received = 0
            async for chunk in response.iter_chunks():
                received += len(chunk)
            assert received == size
        finally:
            response.release()


async def test_a_slow_reader_of_many_small_chunks_is_not_taken_for_a_silent_upstream() -> None:
    """Reading pauses again after each part read while the upstream has more: still the
    reader's silence."""
    count = 100_000
    chunks = b"".join(b"a\r\n0123456789\r\n" for _ in range(count)) + b"0\r\n\r\n"
    chunky = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunks
    async with pool_on(answering(chunky), read_timeout=0.3) as pool:
        response = await pool.request("GET", b"/many", [], None)
        try:
            received = 0
            async for chunk in response.iter_chunks():
                received += len(chunk)
                await asyncio.sleep(0.5)  # the reader's own pace: past the read timeout
            assert received == 10 * count
        finally:
            response.release()


async def test_a_request_body_that_stops_coming_frees_its_slot() -> None:
    stalled = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield b"first part,"
        await stalled.wait()  # the client goes quiet, its connection still open
        yield b"never"

    async with running(limit=1, read_timeout=0.3) as (_, pool):
        with pytest.raises(RequestBodyStalled):
            await pool.request("POST", b"/upload", [], stalls())
        assert await fetch(pool) == (200, b"HEAD")  # the one slot is free again
    stalled.set()


async def test_a_slot_wait_cancelled_as_the_slot_is_released_ends_cleanly() -> None:
    async with running(limit=1) as (_, pool):
        first = await pool.request("GET", b"/a", [], None)  # holds the one slot
        waiting = asyncio.create_task(pool.request("GET", b"/b", [], None))
        await eventually(lambda: pool.waiting == 1)
        waiting.cancel()
        await first.read()
        first.release()  # in the same turn: the release passes over the cancelled waiter
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert pool.free_slots == 1 and pool.waiting == 0

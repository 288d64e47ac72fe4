"""The shipped edge (deploy/nginx/edge.conf, problems.conf) in front of the real gateway
(issue 14, item 9): real nginx, templated only for its port and the gateway's address,
attacked over raw sockets. docs/security.md lists the cases.

Every answer nginx makes itself is problem+json in keelson.errors' vocabulary; the
gateway's own answers pass through as it wrote them; the gateway believes the client's
address from the edge alone.
"""

from __future__ import annotations

import asyncio
import json
import select
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from keelson.errors import KeelsonError
from keelson_dev.embedded import free_port
from keelson_dev.testing import ServiceProcess, gateway_process

from .conftest import read_until_closed
from .test_connections import PARSED_BUT_MALFORMED, REFUSED_BY_GRANIAN

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
EDGE = ROOT / "deploy" / "nginx"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
# The test's own client address, so that the edge's (127.0.0.1) is another.
CLIENT = "127.0.0.7"
FORGED = "203.0.113.9"
START_TIMEOUT = 30.0
BODY_TIMEOUT = 3.0

# What nginx answers, of what granian refuses: 400, but 505 for an HTTP version it does not
# speak and 501 for a transfer coding it does not implement (RFC 9112's statuses). A header
# line without a colon nginx reads as an empty header: the request it sends on is well
# formed, and the gateway answers it (None below).
_EDGE_STATUS: dict[str, int | None] = dict.fromkeys(REFUSED_BY_GRANIAN, 400) | {
    "unknown-version": 505,
    "http-2-in-an-http-1-line": 505,
    "unknown-transfer-coding": 501,
    "chunked-not-last": 501,
    "header-without-colon": None,
}


def _edge_config(listen_port: int, gateway_port: int) -> str:
    """edge.conf with only the listening port, the gateway's address and problems.conf's
    path changed: each must be found once, so the test breaks when the file moves on."""
    text = (EDGE / "edge.conf").read_text()
    for shipped, here in (
        ("listen 8080 default_server;", f"listen 127.0.0.1:{listen_port} default_server;"),
        ("server gateway:8000;", f"server 127.0.0.1:{gateway_port};"),
        ("/etc/nginx/keelson/problems.conf", str(EDGE / "problems.conf")),
    ):
        assert text.count(shipped) == 1, shipped
        text = text.replace(shipped, here)
    return text


@contextmanager
def running_edge(workdir: Path, gateway_port: int) -> Iterator[int]:
    """nginx in the foreground with the shipped server block; yields its port."""
    if not Path(NGINX).exists():
        pytest.skip(f"nginx is not installed ({NGINX}): apt-get install nginx")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (workdir / "edge.conf").write_text(_edge_config(port, gateway_port))
    temp = {kind: workdir / kind for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    (workdir / "nginx.conf").write_text(
        "daemon off;\nmaster_process off;\n"
        f"pid {workdir / 'nginx.pid'};\nerror_log {workdir / 'error.log'} info;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"    access_log {workdir / 'access.log'};\n"
        + "".join(f"    {kind}_temp_path {path};\n" for kind, path in temp.items())
        + f"    include {workdir / 'edge.conf'};\n"
        "}\n"
    )
    command = [NGINX, "-p", str(workdir), "-c", str(workdir / "nginx.conf")]
    with (workdir / "nginx.out").open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert process.poll() is None, (workdir / "nginx.out").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not listen"
                time.sleep(0.05)
        yield port
    finally:
        process.send_signal(signal.SIGQUIT)  # nginx's graceful stop
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def gateway(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """The real gateway, as compose runs it behind the edge: one forwarded hop believed,
    from 127.0.0.1 (the edge) only; JSON logs, so its access records can be read; a body
    timeout of 3 s (the edge's 60 s stays as shipped)."""
    process = gateway_process(
        tmp_path_factory.mktemp("edge-gateway"),
        {},
        redis_url=redis_url,
        env={
            "KEELSON_TRUSTED_PROXY_HOPS": "1",
            "KEELSON_TRUSTED_PROXIES": '["127.0.0.1"]',
            "KEELSON_LOG__FORMAT": "json",
            # Shorter than its 30 s default, so the stalled body's case runs quickly.
            "KEELSON_CONNECTIONS__BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
        },
    )
    try:
        asyncio.run(process.wait_for("/health/live"))
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def edge(gateway: ServiceProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with running_edge(tmp_path_factory.mktemp("edge"), gateway.port) as port:
        yield port


def _exchange(port: int, request: bytes) -> bytes:
    """`request` sent from CLIENT's address; the answer until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=20, source_address=(CLIENT, 0)) as s:
        s.sendall(request)
        return read_until_closed(s)


def _get(port: int, path: str, *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: keelson.example", "Connection: close", *headers]
    return _exchange(port, ("\r\n".join(lines) + "\r\n\r\n").encode())


def _status(answer: bytes) -> int:
    return int(answer.split(b"\r\n", 1)[0].split()[1])


def _head(answer: bytes) -> dict[str, str]:
    lines = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}


def _problem(answer: bytes) -> dict[str, Any]:
    assert _head(answer)["content-type"] == "application/problem+json", answer[:400]
    problem: dict[str, Any] = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    return problem


def _assert_edge_problem(answer: bytes, status: int) -> None:
    """The edge's own problem for `status`: keelson.errors' type and title, no version."""
    assert _status(answer) == status, answer[:400]
    problem = _problem(answer)
    expected = KeelsonError.for_status(status)
    assert (problem["type"], problem["title"]) == (expected.type_uri, expected.title)
    assert problem["status"] == status and problem["detail"]
    assert _head(answer)["server"] == "nginx", "a version or another name"


@pytest.mark.parametrize("name", REFUSED_BY_GRANIAN)
def test_what_granian_answers_bare_is_problem_json_at_the_edge(
    edge: int, gateway: ServiceProcess, name: str
) -> None:
    """Sent: each head granian answers with a bare 400 (test_connections.py), to the edge.
    Holds: nginx answers it (400; 505 for the HTTP versions, 501 for the transfer codings)
    as problem+json with keelson.errors' type and title, `Connection: close`; the header
    line without a colon, which nginx reads as an empty header, reaches the gateway as a
    well-formed request and gets the gateway's answer (its `server: keelson`)."""
    request_line = REFUSED_BY_GRANIAN[name]
    answer = _exchange(edge, request_line)
    status = _EDGE_STATUS[name]
    if status is None:
        assert _head(answer)["server"] == "keelson", answer[:400]
        assert _status(answer) == _status(
            _exchange(gateway.port, request_line.replace(b"X-A\r\n", b""))
        )
        return
    _assert_edge_problem(answer, status)
    assert _head(answer)["connection"] == "close"


@pytest.mark.parametrize("name", PARSED_BUT_MALFORMED)
def test_what_the_gateway_refuses_behind_granian_the_edge_refuses_first(
    edge: int, name: str
) -> None:
    """Sent: the heads granian hands on and the gateway answers 400 problem+json
    (test_connections.py: a target that is no path, authority-form CONNECT, chunked bodies
    that do not decode), to the edge. Holds: nginx refuses each itself, 400 problem+json."""
    _assert_edge_problem(_exchange(edge, PARSED_BUT_MALFORMED[name]), 400)


def test_a_request_passes_through_with_the_gateways_answer(
    edge: int, gateway: ServiceProcess
) -> None:
    """Sent: `GET /health/live` through the edge and to the gateway directly. Holds: the
    same status, body and headers (the gateway's `server: keelson` and security headers
    among them; only `date`, `connection` and the request id differ)."""
    through, direct = _get(edge, "/health/live"), _get(gateway.port, "/health/live")
    assert _status(through) == _status(direct) == 200
    assert through.split(b"\r\n\r\n", 1)[1] == direct.split(b"\r\n\r\n", 1)[1]
    per_request = {"date", "x-request-id", "connection"}
    head_through, head_direct = _head(through), _head(direct)
    assert head_through["server"] == "keelson"
    assert {k: v for k, v in head_through.items() if k not in per_request} == {
        k: v for k, v in head_direct.items() if k not in per_request
    }


@pytest.mark.parametrize(
    ("path", "status"), [("/nowhere", 401), ("/api/v1/auth/me", 503)], ids=["refused", "upstream"]
)
def test_the_gateways_own_problems_pass_untouched(
    edge: int, gateway: ServiceProcess, path: str, status: int
) -> None:
    """Sent: a path the gateway refuses (401: no token) and one it proxies to an upstream
    that is down (503). Holds: the gateway's problem+json, its detail and request id, with
    `server: keelson`: the edge does not put its own error page in place of an error
    answer from the gateway (proxy_intercept_errors off), not even a 5xx."""
    request_id = uuid.uuid4().hex
    answer = _get(edge, path, f"X-Request-ID: {request_id}")
    assert _status(answer) == status, answer[:400]
    assert _head(answer)["server"] == "keelson"
    problem = _problem(answer)
    assert problem["request_id"] == request_id
    assert (
        problem["detail"] == json.loads(_get(gateway.port, path).split(b"\r\n\r\n", 1)[1])["detail"]
    )


def test_a_stalled_body_is_the_gateways_408_problem(edge: int, gateway: ServiceProcess) -> None:
    """Sent: a POST to the gateway's handshake route declaring 100 bytes of body, 10 of
    them, then silence, through the edge (which streams bodies on). Holds: the gateway's
    408 problem+json (`server: keelson`) reaches the client: the edge waits longer than the
    gateway (nginx itself would drop the connection without an answer)."""
    head = (
        b"POST /api/v1/handshake HTTP/1.1\r\nHost: gateway\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    answer = _exchange(edge, head + b'{"public_')
    assert _status(answer) == 408, answer[:400]
    assert _head(answer)["server"] == "keelson"
    assert _problem(answer)["status"] == 408


def test_the_gateway_down_is_a_502_problem(tmp_path: Path) -> None:
    """Sent: `GET /health/live` to an edge whose gateway does not listen. Holds: 502
    problem+json, keelson.errors' `bad-gateway`, from the edge."""
    with running_edge(tmp_path / "edge", free_port()) as port:
        _assert_edge_problem(_get(port, "/health/live"), 502)


_HEAD = b"GET /health/live HTTP/1.1\r\nHost: gateway\r\n"
_OVERSIZED = {
    "a-header-over-16k": (_HEAD + b"X-Big: " + b"a" * 20_000 + b"\r\n\r\n", 431),
    "a-head-over-64k": (
        _HEAD + b"".join(b"X-H%d: %s\r\n" % (i, b"a" * 15_000) for i in range(5)) + b"\r\n",
        431,
    ),
    "a-target-over-16k": (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: gateway\r\n\r\n", 414),
}


@pytest.mark.parametrize(("request_head", "status"), _OVERSIZED.values(), ids=_OVERSIZED.keys())
def test_an_oversized_head_is_a_problem(edge: int, request_head: bytes, status: int) -> None:
    """Sent: a 20 KB header, a head of five 15 KB headers, a 20 KB target (the edge reads
    a head in four 16 KiB buffers, the gateway's 64 KiB). Holds: 431 (nginx's 494) or
    414 problem+json from the edge."""
    _assert_edge_problem(_exchange(edge, request_head), status)


def test_an_8_mb_head_is_refused_while_it_is_read(edge: int) -> None:
    """Sent: an 8 MB request head in 64 KiB pieces, until an answer comes. Holds: 431
    problem+json, and it comes long before the head is all sent: the edge stops reading
    at its buffers (what it reads after answering, while it lingers, it throws away)."""
    head = b"GET /health/live HTTP/1.1\r\nHost: gateway\r\nX-Big: " + b"a" * 8_000_000
    sent = 0
    with socket.create_connection(("127.0.0.1", edge), timeout=20) as s:
        try:
            for start in range(0, len(head), 65536):
                if select.select([s], [], [], 0)[0]:
                    break
                s.sendall(head[start : start + 65536])
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_until_closed(s)
    _assert_edge_problem(answer, 431)
    assert sent < len(head), "the edge read the whole 8 MB head"


def _access_record(gateway: ServiceProcess, request_id: str) -> dict[str, Any]:
    """The gateway's access record of the request, once written (its log is JSON lines)."""
    deadline = time.monotonic() + 20
    while True:
        for line in gateway.log.read_text().splitlines():
            if request_id in line and '"gateway.access"' in line:
                record: dict[str, Any] = json.loads(line)
                if record["request_id"] == request_id:
                    return record
        assert time.monotonic() < deadline, f"no access record of {request_id}"
        time.sleep(0.1)


def test_a_forwarded_for_sent_by_the_client_is_not_believed(
    edge: int, gateway: ServiceProcess
) -> None:
    """Sent: a request carrying `X-Forwarded-For: 203.0.113.9` from 127.0.0.7, through the
    edge and (a client that bypasses it) to the gateway directly. Holds: the gateway's
    access record names 127.0.0.7 both times: through the edge, the one hop the gateway
    believes is the address the edge saw; directly, the gateway believes the header from
    the edge's address (127.0.0.1) only. (That the edge replaces the client's header rather
    than appending to it changes nothing the gateway believes; it keeps the client's
    words out of what the services are sent.)"""
    for port in (edge, gateway.port):
        request_id = uuid.uuid4().hex
        answer = _get(port, "/nowhere", f"X-Request-ID: {request_id}", f"X-Forwarded-For: {FORGED}")
        assert _status(answer) == 401, answer[:300]
        assert _access_record(gateway, request_id)["attrs"]["client_ip"] == CLIENT, port


def test_no_answer_names_nginxs_version(edge: int) -> None:
    """Sent: a request the edge refuses, one the gateway answers and one path the edge
    keeps for its problems. Holds: no `nginx/` version anywhere in the answers; the edge's
    own answers say `Server: nginx` (stock nginx cannot drop the header)."""
    answers = [
        _exchange(edge, REFUSED_BY_GRANIAN["bad-method-token"]),
        _get(edge, "/health/live"),
        _get(edge, "/.keelson-edge/problem/400"),
    ]
    for answer in answers:
        assert b"nginx/" not in answer.lower(), answer[:400]
    _assert_edge_problem(answers[2], 404)

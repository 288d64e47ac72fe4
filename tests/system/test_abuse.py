"""The suite attacked from outside, as `make up` runs it: through the gateway and straight
at the service ports. Each case names what was sent and what must hold; docs/security.md
lists them with the command that reproduces them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import zmq
from jose import jwt

from keelson.auth import IdentityKey, Principal, identity_key, sign_identity
from keelson.config import KeelsonSettings
from keelson.keys import KeyManager, SigningKey
from keelson_dev.testing import eventually

from .conftest import RunningSuite

pytestmark = pytest.mark.timeout(600)
SERVICE_PORTS = ("auth", "logs", "notifications", "payments")
NUL = "a\x00b"


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            if method in ("get", "post", "put", "patch", "delete"):
                yield method.upper(), path, operation


def _concrete(path: str) -> str:
    """The path with every parameter filled in (an id that belongs to nobody)."""
    return re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)


def _resolve(schema: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = document["components"]["schemas"][name]
    return schema


def _example(schema: dict[str, Any], document: dict[str, Any], depth: int = 0) -> Any:
    """A value of `schema` whose every free string holds a NUL character."""
    schema = _resolve(schema, document)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [s for s in schema[key] if _resolve(s, document).get("type") != "null"]
            return _example(options[0], document, depth) if options else None
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if kind == "string":
        return "a\x00b@example.com" if schema.get("format") == "email" else NUL
    if kind == "integer":
        return max(1, schema.get("minimum", 1))
    if kind == "number":
        return 1.0
    if kind == "boolean":
        return True
    if kind == "array":
        return [_example(schema.get("items", {}), document, depth + 1)] if depth < 4 else []
    if depth >= 4:
        return {}
    properties = schema.get("properties", {})
    return {name: _example(sub, document, depth + 1) for name, sub in properties.items()}


def _json_body(operation: dict[str, Any], document: dict[str, Any]) -> Any | None:
    content = operation.get("requestBody", {}).get("content", {})
    schema = content.get("application/json", {}).get("schema")
    return None if schema is None else _example(schema, document)


# RFC 6749 (section 5.2) fixes the token endpoint's error body: JSON with an `error` code,
# which OAuth2 client libraries parse; every other error is RFC 9457 problem+json.
_OAUTH2_ERRORS = ("/api/v1/auth/token",)


def _assert_problem(response: httpx.Response, what: str) -> None:
    assert response.status_code < 500, (what, response.status_code, response.text[:300])
    if response.status_code >= 400:
        problem = response.headers["content-type"] == "application/problem+json"
        if response.url.path in _OAUTH2_ERRORS and not problem:
            assert response.json()["error"], (what, response.text[:300])
            return
        assert problem, (what, response)


def _hmac_identity(principal: Principal, master: str) -> dict[str, str]:
    """The header as every service could sign it before: HMAC-SHA256 (format v2) keyed from
    the master key all of them hold."""
    fields = [principal.user_id, sorted(principal.roles), [], principal.jti, None, None]
    payload = _b64u(json.dumps([*fields, int(time.time())]).encode())
    key = KeyManager(master).derive("internal-identity")
    mac = hmac.new(key, b"keelson-identity/v2\n" + payload.encode(), hashlib.sha256).digest()
    return {"x-keelson-identity": payload + "." + _b64u(mac)}


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_identity_headers_not_signed_by_the_gateway_are_refused_on_service_ports(
    suite: RunningSuite,
) -> None:
    """Sent: an admin identity signed (a) with a key derived from the public development
    master key, (b) with one derived from this suite's own master key (which every service
    holds), (c) in the old HMAC format keyed from that master key, (d) with a fresh Ed25519
    key, straight to every authenticated operation of every service. Holds: 401 from every
    one; the same identity signed with the gateway's key (its file in the state folder) is
    believed (200 on auth's and logs' admin lists)."""
    development = KeelsonSettings().master_key.get_secret_value()
    master = (suite.root / ".keelson" / "master.key").read_text().strip()
    admin = Principal(
        user_id=str(uuid.uuid4()),
        roles=frozenset({"admin"}),
        scopes=frozenset({"users:read", "logs:read"}),
        jti=uuid.uuid4().hex,
    )
    forgeries = {
        "development master key": sign_identity(admin, identity_key(KeyManager(development))),
        "this suite's master key": sign_identity(admin, identity_key(KeyManager(master))),
        "old HMAC format": _hmac_identity(admin, master),
        "a key of its own": sign_identity(admin, IdentityKey.generate()),
    }
    checked = 0
    with httpx.Client(timeout=15) as client:
        for name in SERVICE_PORTS:
            document = client.get(f"{suite.url(name)}/openapi.json").json()
            for method, path, operation in _operations(document):
                if not operation.get("security"):
                    continue
                for what, forged in forgeries.items():
                    response = client.request(
                        method, suite.url(name) + _concrete(path), headers=forged, json={}
                    )
                    assert response.status_code == 401, (
                        what,
                        name,
                        method,
                        path,
                        response.text[:200],
                    )
                    checked += 1
        gateway_key = IdentityKey.from_text(
            [(suite.root / ".keelson" / "identity.key").read_text()]
        )
        genuine = sign_identity(admin, gateway_key)
        for name, path in (("auth", "/api/v1/auth/users"), ("logs", "/api/v1/logs")):
            response = client.get(suite.url(name) + path, headers=genuine)
            assert response.status_code == 200, (name, response.text[:200])
    assert checked >= 20


def test_every_operation_refuses_nul_in_every_string_and_never_answers_5xx(
    suite: RunningSuite,
) -> None:
    """Sent: every operation of the merged OpenAPI, as an admin, with a NUL character in
    every string of its JSON body and ids that belong to nobody. Holds: no 5xx, every error
    problem+json, and no body with a NUL accepted."""
    admin = suite.admin()
    with suite.client() as client:
        document = client.get("/openapi.json").json()
        tried = 0
        for method, path, operation in _operations(document):
            body = _json_body(operation, document)
            if body is None:
                continue
            response = client.request(method, _concrete(path), headers=admin, json=body)
            _assert_problem(response, f"{method} {path}")
            assert not 200 <= response.status_code < 300, (method, path, response.text[:200])
            tried += 1
    assert tried >= 5


def test_every_operation_answers_a_user_with_a_problem_or_success_never_5xx(
    suite: RunningSuite,
) -> None:
    """Sent: every operation of the merged OpenAPI as an ordinary user with an empty body
    and ids that belong to nobody. Holds: no 5xx; errors are problem+json; admin-only
    routes (`/users`, `/logs`, dead letters, the plugin admin) refuse the user with 403."""
    _, user = suite.new_user()
    with suite.client() as client:
        document = client.get("/openapi.json").json()
        # What ends the user's session (logout, account deletion) goes last.
        ordered = sorted(_operations(document), key=lambda op: _ends_the_session(op[0], op[1]))
        for method, path, _operation in ordered:
            response = client.request(method, _concrete(path), headers=user, json={})
            _assert_problem(response, f"{method} {path}")
            admin_only = path.startswith(("/api/v1/auth/users", "/api/v1/logs", "/api/v1/admin"))
            if admin_only or "dead-letters" in path:
                assert response.status_code == 403, (method, path, response.text[:200])


def _ends_the_session(method: str, path: str) -> bool:
    return "logout" in path or (method == "DELETE" and path.endswith("/me"))


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_forged_tokens_are_refused(suite: RunningSuite) -> None:
    """Sent: alg none, HS256 keyed with auth's public key, a foreign key under auth's kid,
    and a real token with its claims edited. Holds: 401 from the gateway and from auth."""
    _, user = suite.new_user()
    real = user["Authorization"].removeprefix("Bearer ")
    header = jwt.get_unverified_header(real)
    claims = jwt.get_unverified_claims(real)
    admin_claims = {**claims, "roles": ["admin", "user"]}
    with suite.client() as client:
        jwks = client.get("/.well-known/jwks.json").json()
    public = json.dumps(jwks["keys"][0])
    foreign = SigningKey.generate()
    forgeries = {
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(admin_claims)}.",
        "HS256 with the public key": jwt.encode(
            admin_claims, public, algorithm="HS256", headers={"kid": header["kid"]}
        ),
        "a foreign key under auth's kid": jwt.encode(
            admin_claims, foreign.private_pem, algorithm="ES256", headers={"kid": header["kid"]}
        ),
        "edited claims": ".".join((real.split(".")[0], _b64(admin_claims), real.split(".")[2])),
    }
    with httpx.Client(timeout=15) as client:
        for name, token in forgeries.items():
            for base in (suite.gateway, suite.url("auth")):
                response = client.get(
                    f"{base}/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"}
                )
                assert response.status_code == 401, (name, base, response.text[:200])


def test_the_log_intake_stores_nothing_from_an_unauthenticated_sender(
    suite: RunningSuite,
) -> None:
    """Sent: a plain ZeroMQ batch to the log intake claiming to be the gateway, with a
    unique marker. Holds: the gateway's own later records arrive, the forged one never."""
    marker = f"forged-{uuid.uuid4().hex}"
    record = {
        "id": uuid.uuid4().hex,
        "ts": time.time() - 3600,
        "service": "gateway",
        "level": "ERROR",
        "logger": "gateway.access",
        "message": marker,
        "request_id": None,
        "trace_id": None,
        "user_id": None,
        "attrs": {},
    }
    context = zmq.Context.instance()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(suite.log_intake)
    try:
        socket.send_multipart([b"KLOG1", b"forged", json.dumps(record).encode()], zmq.NOBLOCK)
    except zmq.Again:
        pass  # not even connected: CURVE refused the handshake
    finally:
        socket.close(0)
    admin = suite.admin()
    request_id = f"after-forgery-{uuid.uuid4().hex}"
    with suite.client() as client:
        client.get("/api/v1/auth/me", headers={**admin, "X-Request-ID": request_id})

        def arrived() -> bool:
            page = client.get("/api/v1/logs", params={"request_id": request_id}, headers=admin)
            return page.status_code == 200 and bool(page.json()["items"])

        eventually_sync(arrived, timeout=30)
        forged = client.get("/api/v1/logs", params={"q": marker}, headers=admin)
        assert forged.status_code == 200
        assert forged.json()["items"] == []


def eventually_sync(check: Any, *, timeout: float) -> None:
    import asyncio

    asyncio.run(eventually(check, timeout=timeout, interval=0.2))


def test_redirects_never_name_an_upstream(suite: RunningSuite) -> None:
    """Sent: a path with a trailing slash, which the upstream redirects. Holds: the
    Location the client gets is the gateway's own (relative), not the upstream's address."""
    with suite.client() as client:
        answer = client.get("/api/v1/auth/me/", headers=suite.admin())
    assert answer.status_code in (307, 308), answer.text[:200]
    assert answer.headers["location"] == "/api/v1/auth/me"


@pytest.mark.parametrize("where", ["gateway", "auth", "logs"])
@pytest.mark.parametrize(
    "head",
    [
        b"GET /health/live HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"GET /health/live HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
        b"GET /health/live HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n",
        b"GET /health/live HTTP/1.1\r\nHost: a/b@c\r\nConnection: close\r\n\r\n",
        b"GET /health/live HTTP/1.1\r\nHost: caf\xc3\xa9\r\nConnection: close\r\n\r\n",
    ],
    ids=["no-host", "two-hosts", "host-with-a-space", "host-with-a-path", "host-not-ascii"],
)
def test_a_request_without_exactly_one_host_is_400(
    suite: RunningSuite, where: str, head: bytes
) -> None:
    """Sent: HTTP/1.1 without Host, with two, and with one whose value is no host, on the
    gateway and service ports. Holds: 400 problem+json (RFC 9112, 3.2)."""
    import socket

    port = int(suite.url(where).rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(head)
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    assert answer.split(b"\r\n", 1)[0].split()[1] == b"400", answer[:200]
    assert b"content-type: application/problem+json" in answer.lower()

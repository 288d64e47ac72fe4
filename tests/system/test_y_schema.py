"""schemathesis over the gateway's merged OpenAPI, as an ordinary user and as an admin:
no 5xx, every error problem+json, and every answer matching the schema the document gives
for it. Bounded: a few examples an operation, so the module takes a few minutes at most.

Left out of the fuzzing, and why:
- the login-like public routes (login, token, refresh, register, password reset, email
  verification) are rate limited per client address: fuzzing them would spend this
  address's budget and lock every later case's logins out. `test_abuse.py` sends each
  of them a NUL in every field, and the auth service's own tests bound every input.
- logout (it would end the session the other cases use), the gateway's configuration
  reload, and the admin's own profile (`PATCH /api/v1/auth/me` as the admin).
- the log tail (`GET /api/v1/logs/tail`): a stream that stays open until its own timeout,
  about 10 s an example; `test_authorisation.py` checks that it refuses users (403).

Runs late (its name sorts after the other modules but the secrets grep): it leaves users,
payments and notifications behind.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from .conftest import RunningSuite

pytestmark = pytest.mark.timeout(900)

LOGIN_LIKE = (
    r"^/api/v1/auth/(login|token|refresh|register|logout)$"
    r"|^/api/v1/auth/(password-reset|verify-email)/"
)
# RFC 6749 (section 5.2) fixes the token endpoint's error body; it is not fuzzed anyway.
_CHECKS = [schemathesis.checks.not_a_server_error, schemathesis.checks.response_schema_conformance]
_BOUNDS = settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)


def _operations(suite: RunningSuite, *, admin: bool) -> list[tuple[str, str]]:
    document = suite.merged_openapi()
    skipped = {("POST", "/api/v1/admin/reload"), ("GET", "/api/v1/logs/tail")}
    if admin:
        skipped.add(("PATCH", "/api/v1/auth/me"))
    return [
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
        and not re.search(LOGIN_LIKE, path)
        and (method.upper(), path) not in skipped
    ]


def _fuzz(suite: RunningSuite, headers: dict[str, str], *, admin: bool) -> int:
    """Each operation's examples (schemathesis' strategy for it, under `_BOUNDS`); the
    number of operations fuzzed."""
    schema = schemathesis.openapi.from_dict(suite.merged_openapi())
    operations = _operations(suite, admin=admin)
    sent: dict[str, int] = {}
    for method, path in operations:
        name = f"{method} {path}"

        # Called at once, within this iteration: `name` is the one it was defined with.
        @given(case=schema[path][method].as_strategy())
        @_BOUNDS
        def examples(case: Any) -> None:
            _call(case, suite, headers)
            sent[name] = sent.get(name, 0) + 1  # noqa: B023

        examples()
    # Every operation was really called, most of them more than once.
    assert set(sent) == {f"{method} {path}" for method, path in operations}
    assert sum(sent.values()) >= 2 * len(operations), sent
    print(f"schemathesis: {sum(sent.values())} requests over {len(operations)} operations")
    return len(operations)


def _call(case: Any, suite: RunningSuite, headers: dict[str, str]) -> None:
    response = case.call(base_url=suite.gateway, headers=headers, timeout=30)
    case.validate_response(response, checks=_CHECKS)
    if response.status_code >= 400:
        content_type = response.headers.get("content-type")  # a list: every value received
        assert content_type == ["application/problem+json"], (
            case.method,
            case.formatted_path,
            response.status_code,
            response.text[:300],
        )


def test_the_merged_api_as_a_user(suite: RunningSuite) -> None:
    """Sent: schemathesis' examples for every operation (but those above), with an
    ordinary user's token. Holds: no 5xx, errors problem+json, answers match the schema."""
    assert _fuzz(suite, suite.user("b")[1], admin=False) >= 30


def test_the_merged_api_as_an_admin(suite: RunningSuite) -> None:
    """The same with the admin's token."""
    assert _fuzz(suite, suite.admin(), admin=True) >= 30

"""Every route of every service says who may call it, and a token without the scope a
route declares is refused there (403).

The OpenAPI document of each service is walked: an operation either carries a security
requirement (its scopes, if any, listed) or is marked public (`keelson.auth.PUBLIC`).
Each scoped operation is then called, through the real app, by a caller holding every
role and every other scope: the missing one must be enough for a 403.
"""

import asyncio
import importlib
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from auth_service.settings import DEFAULT_ROLE_SCOPES
from keelson.auth import PUBLIC_ACCESS_KEY, Principal, identity_key, sign_identity
from keelson.config import KeelsonSettings, LogSettings
from keelson.keys import KeyManager
from keelson_dev.embedded import free_port
from keelson_dev.suite import SERVICES
from keelson_dev.testing import migrated

BACKENDS = [(s.name, s.package) for s in SERVICES if s.name != "gateway"]
ALL_ROLES = frozenset(DEFAULT_ROLE_SCOPES)
ALL_SCOPES = frozenset(scope for scopes in DEFAULT_ROLE_SCOPES.values() for scope in scopes)
_METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture(scope="module", params=BACKENDS, ids=[name for name, _ in BACKENDS])
async def service(
    request: pytest.FixtureRequest, test_database_url: str, redis_url: str
) -> AsyncIterator[tuple[FastAPI, KeelsonSettings]]:
    _, package = request.param
    await asyncio.to_thread(migrated, test_database_url, package)
    settings_cls = importlib.import_module(f"{package}.settings").Settings
    settings = settings_cls(
        env="test",
        database_url=test_database_url,
        redis_url=redis_url,
        log=LogSettings(ship_endpoint=None),
        logs={"bind_endpoint": f"tcp://127.0.0.1:{free_port()}"},
    )
    app = importlib.import_module(f"{package}.app").create_app(settings)
    async with app.router.lifespan_context(app):
        yield app, settings


def operations(app: FastAPI) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, item in app.openapi()["paths"].items()
        for method, operation in item.items()
        if method in _METHODS
    ]


def required_scopes(operation: dict[str, Any]) -> set[str]:
    return {scope for entry in operation.get("security", []) for s in entry.values() for scope in s}


async def test_every_route_declares_who_may_call_it(
    service: tuple[FastAPI, KeelsonSettings],
) -> None:
    app, _ = service
    undeclared = [
        f"{method.upper()} {path}"
        for method, path, operation in operations(app)
        if not operation.get("security") and operation.get(PUBLIC_ACCESS_KEY) != "public"
    ]
    assert not undeclared, f"routes without a policy: {undeclared}"


async def test_a_caller_without_the_declared_scope_is_refused_on_every_route(
    service: tuple[FastAPI, KeelsonSettings],
) -> None:
    app, settings = service
    key = identity_key(KeyManager.from_settings(settings))
    scoped = [(m, p, required_scopes(op)) for m, p, op in operations(app) if required_scopes(op)]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://service.test") as client:
        for method, path, needed in scoped:
            url = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)
            for missing in sorted(needed):
                caller = Principal(
                    user_id=str(uuid.uuid4()), roles=ALL_ROLES, scopes=ALL_SCOPES - {missing}
                )
                response = await client.request(method, url, headers=sign_identity(caller, key))
                assert response.status_code == 403, (method, path, missing, response.text)
                assert missing in response.json()["detail"]
            anonymous = await client.request(method, url)
            assert anonymous.status_code == 401, (method, path)


def test_the_default_role_table_grants_what_the_services_ask_for() -> None:
    assert "logs:read" in DEFAULT_ROLE_SCOPES["ops"]
    assert "users:read" not in DEFAULT_ROLE_SCOPES["ops"]
    assert {"notifications:send", "payments:write"} <= set(DEFAULT_ROLE_SCOPES["user"])

"""Another service verifying auth's tokens with keelson.auth over real HTTP and shared Redis."""

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends

from auth_service.app import create_app
from keelson.auth import AuthPlugin, CurrentUser, require_role
from keelson.config import KeelsonSettings, LogSettings, PluginSettings
from keelson.http import create_app as create_service_app
from keelson.service import build_container
from keelson_dev.testing import LiveServer

router = APIRouter()


@router.get("/orders")
async def list_orders(principal: CurrentUser) -> dict[str, str]:
    return {"owner": principal.user_id}


@router.get("/reports", dependencies=[Depends(require_role("admin"))])
async def read_reports() -> dict[str, str]:
    return {"ok": "yes"}


@pytest.fixture(scope="module")
def live_auth(auth_settings_factory: Callable[..., Any]) -> Any:
    with LiveServer(create_app(auth_settings_factory())) as server:
        yield server


@pytest.fixture
async def other_service(live_auth: LiveServer, redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = KeelsonSettings(
        service="orders",
        redis_url=redis_url,
        log=LogSettings(ship_endpoint=None),
        plugins={
            "auth": PluginSettings.model_validate(
                {"jwks_url": f"{live_auth.url}/.well-known/jwks.json"}
            )
        },
    )
    container = build_container(settings, [AuthPlugin], database=False)
    app = create_service_app(settings, container=container, routers=[router])
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://orders.test") as client:
            yield client


async def test_tokens_from_auth_work_elsewhere_and_logout_is_immediate(
    live_auth: LiveServer,
    other_service: httpx.AsyncClient,
    password: str,
    new_email: Callable[..., str],
) -> None:
    async with httpx.AsyncClient(base_url=live_auth.url) as auth:
        email = new_email()
        registered = await auth.post(
            "/api/v1/auth/register", json={"email": email, "password": password}
        )
        assert registered.status_code == 202
        tokens = (
            await auth.post("/api/v1/auth/login", json={"email": email, "password": password})
        ).json()
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}

        orders = await other_service.get("/orders", headers=headers)
        assert orders.status_code == 200
        me = await auth.get("/api/v1/auth/me", headers=headers)
        assert orders.json() == {"owner": me.json()["id"]}
        assert (await other_service.get("/reports", headers=headers)).status_code == 403

        assert (await auth.post("/api/v1/auth/logout", headers=headers)).status_code == 204
        refused = await other_service.get("/orders", headers=headers)
        assert refused.status_code == 401
        assert refused.json()["detail"] == "token revoked"

"""The app factory: the standard plugins and access-token checks, one route that fails."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from pydantic import BaseModel

from keelson import monitor
from keelson.auth import AuthPlugin, CurrentUser
from keelson.config import KeelsonSettings
from keelson.service import create_service_app, startup_settings

router = APIRouter()


class Charge(BaseModel):
    card_token: str


@router.post("/api/v1/orders/{order}/charge")
async def charge(order: str, body: Charge, user: CurrentUser) -> None:
    monitor.add_breadcrumb("order loaded", category="commerce", order=order)
    monitor.add_breadcrumb("charging the card", category="payment", card_token=body.card_token)
    with monitor.trace("bank.charge", op="payment.provider"):
        raise RuntimeError(f"the bank hung up while charging order {order}")


def create_app(settings: KeelsonSettings | None = None) -> FastAPI:
    return create_service_app(
        settings or startup_settings(KeelsonSettings),
        plugins=[AuthPlugin],
        routers=[router],
        title="Monitored",
        database=False,
    )

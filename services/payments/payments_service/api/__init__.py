"""HTTP routers of the payments service, one per resource."""

from __future__ import annotations

from fastapi import APIRouter

from payments_service.api import customers, intents, refunds, sandbox, webhooks

__all__ = ["routers"]

routers: list[APIRouter] = [
    customers.router,
    intents.router,
    refunds.router,
    webhooks.router,
    sandbox.router,
]

"""HTTP routers of the gateway's own endpoints, one per resource."""

from __future__ import annotations

from fastapi import APIRouter

from gateway.api.admin import router as admin_router
from gateway.api.handshake import router as handshake_router

__all__ = ["routers"]

routers: list[APIRouter] = [admin_router, handshake_router]

"""HTTP routers of the logs service, one per resource."""

from __future__ import annotations

from fastapi import APIRouter

__all__ = ["routers"]

routers: list[APIRouter] = []

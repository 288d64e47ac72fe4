"""HTTP routers of the logs service, one per resource."""

from __future__ import annotations

from fastapi import APIRouter

from logs_service.api import logs

__all__ = ["routers"]

routers: list[APIRouter] = [logs.router]

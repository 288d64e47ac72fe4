"""`/health/live`, `/health/ready` and `/health`, answered from the plugin container."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from keelson.plugins import PluginContainer, PluginState

__all__ = ["health_router", "readiness"]


async def readiness(container: PluginContainer) -> tuple[str, dict[str, dict[str, Any]]]:
    """`ready`, `degraded` (an optional part is out) or `unavailable`, and the report."""
    report = await container.health()
    status = "ready"
    for entry in report.values():
        state = entry["state"]
        if state in (PluginState.DISABLED, PluginState.REGISTERED):
            continue
        failing = state != PluginState.RUNNING or entry.get("healthy") is False
        if not failing:
            continue
        hard = entry["required"] and (state != PluginState.RUNNING or entry.get("critical", True))
        if hard:
            return "unavailable", report
        status = "degraded"
    return status, report


def health_router(container: PluginContainer) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "alive"}

    @router.get("/health/ready")
    async def ready(request: Request) -> JSONResponse:
        if getattr(request.app.state, "draining", False):
            return JSONResponse({"status": "draining"}, status_code=503)
        status, report = await readiness(container)
        failing = {
            name: entry
            for name, entry in report.items()
            if entry["state"] == PluginState.ERROR or entry.get("healthy") is False
        }
        code = 503 if status == "unavailable" else 200
        return JSONResponse({"status": status, "failing": failing}, status_code=code)

    @router.get("/health")
    async def summary(request: Request) -> JSONResponse:
        status, report = await readiness(container)
        settings = request.app.state.settings
        body = {
            "status": status,
            "service": settings.service,
            "version": request.app.version,
            "plugins": report,
        }
        return JSONResponse(body, status_code=503 if status == "unavailable" else 200)

    return router

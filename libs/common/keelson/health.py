"""`/health/live`, `/health/ready` and `/health`, answered from the plugin container."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from keelson.auth import PUBLIC
from keelson.config import Environment
from keelson.draining import draining_elsewhere
from keelson.plugins import PluginContainer, PluginState

__all__ = ["health_router", "readiness"]

_log = logging.getLogger("keelson.health")


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


# Failure text names hosts, ports and drivers: fine on a laptop, not for anyone on the
# internet who can reach the gateway's probes. Staging and prod log it instead.
_PRIVATE_KEYS = ("error", "detail")


def _public(report: dict[str, dict[str, Any]], env: Environment) -> dict[str, dict[str, Any]]:
    if env in (Environment.DEV, Environment.TEST):
        return report
    return {
        name: {k: v for k, v in entry.items() if k not in _PRIVATE_KEYS}
        for name, entry in report.items()
    }


def health_router(container: PluginContainer) -> APIRouter:
    router = APIRouter(tags=["health"])
    env = container.settings.env
    last_failing: dict[str, dict[str, Any]] = {}

    def note_change(failing: dict[str, dict[str, Any]]) -> None:
        """Log what fails once per change, so operators see the text clients don't."""
        nonlocal last_failing
        if failing != last_failing:
            if failing:
                _log.warning("readiness failing: %s", failing)
            else:
                _log.info("readiness recovered")
            last_failing = failing

    @router.get("/health/live", openapi_extra=PUBLIC)
    async def live() -> dict[str, str]:
        return {"status": "alive"}

    @router.get("/health/ready", openapi_extra=PUBLIC)
    async def ready(request: Request) -> JSONResponse:
        if getattr(request.app.state, "draining", False) or draining_elsewhere():
            return JSONResponse({"status": "draining"}, status_code=503)
        status, report = await readiness(container)
        failing = {
            name: entry
            for name, entry in report.items()
            if entry["state"] == PluginState.ERROR or entry.get("healthy") is False
        }
        note_change(failing)
        code = 503 if status == "unavailable" else 200
        body = {"status": status, "failing": _public(failing, env)}
        return JSONResponse(body, status_code=code)

    @router.get("/health", openapi_extra=PUBLIC)
    async def summary(request: Request) -> JSONResponse:
        status, report = await readiness(container)
        settings = request.app.state.settings
        body = {
            "status": status,
            "service": settings.service,
            "version": request.app.version,
            "plugins": _public(report, env),
        }
        return JSONResponse(body, status_code=503 if status == "unavailable" else 200)

    return router

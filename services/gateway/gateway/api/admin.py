"""`/api/v1/admin`: the plugins' states and health, and a config reload."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from gateway.deps import AdminDep, ContainerDep, PipelineDep
from gateway.reload import reload_config
from keelson.config import ConfigError
from keelson.errors import Unprocessable

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])


@router.get("/plugins")
async def list_plugins(
    _: AdminDep, container: ContainerDep, pipeline: PipelineDep
) -> dict[str, Any]:
    report = await container.health()
    for cls in pipeline.plugins:
        entry = report.get(cls.metadata.name)
        if entry is not None:
            entry["description"] = cls.metadata.description
            entry["enabled"] = container.settings.plugin(cls.metadata.name).enabled
    return {
        "degraded": container.degraded,
        "pipeline": list(pipeline.layers),
        "plugins": report,
    }


@router.post("/reload")
async def reload_settings(_: AdminDep, request: Request) -> dict[str, Any]:
    try:
        changed = reload_config(request.app)
    except ConfigError as exc:
        raise Unprocessable(f"configuration refused, nothing changed: {exc}") from None
    return {"reloaded": changed}

"""FastAPI dependencies of the logs API, declared once."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from keelson.auth import Principal, require_scope
from keelson.service import provided
from logs_service.plugins import LOG_STORE, TAIL_HUB
from logs_service.settings import IngestSettings
from logs_service.store import LogStore
from logs_service.tail import TailHub

__all__ = ["IngestSettingsDep", "Operator", "StoreDep", "TailHubDep"]


def get_ingest_settings(request: Request) -> IngestSettings:
    settings: IngestSettings = request.app.state.settings.logs
    return settings


StoreDep = Annotated[LogStore, Depends(provided(LOG_STORE))]
TailHubDep = Annotated[TailHub, Depends(provided(TAIL_HUB))]
IngestSettingsDep = Annotated[IngestSettings, Depends(get_ingest_settings)]
# Logs hold every service's internals: only operators read them.
# The admin and ops roles grant `logs:read`.
Operator = Annotated[Principal, Depends(require_scope("logs:read"))]

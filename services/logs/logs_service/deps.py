"""FastAPI dependencies of the logs API, declared once."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from keelson.auth import Principal, require_scope
from logs_service.plugins import LOG_STORE, TAIL_HUB
from logs_service.settings import IngestSettings
from logs_service.store import LogStore
from logs_service.tail import TailHub

__all__ = ["IngestSettingsDep", "Operator", "StoreDep", "TailHubDep"]


def get_store(request: Request) -> LogStore:
    store: LogStore = request.app.state.container.resolve(LOG_STORE)
    return store


def get_tail_hub(request: Request) -> TailHub:
    hub: TailHub = request.app.state.container.resolve(TAIL_HUB)
    return hub


def get_ingest_settings(request: Request) -> IngestSettings:
    settings: IngestSettings = request.app.state.settings.logs
    return settings


StoreDep = Annotated[LogStore, Depends(get_store)]
TailHubDep = Annotated[TailHub, Depends(get_tail_hub)]
IngestSettingsDep = Annotated[IngestSettings, Depends(get_ingest_settings)]
# Logs hold every service's internals: only operators read them.
# The admin and ops roles grant `logs:read`.
Operator = Annotated[Principal, Depends(require_scope("logs:read"))]

"""FastAPI dependencies of the notifications service, each declared once as an `Annotated` alias."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from keelson.auth import Principal, require_role, require_scope
from keelson.db import get_session
from keelson.service import provided
from notifications_service.delivery import DeliveryWorker
from notifications_service.plugin import RENDERER, WORKER
from notifications_service.settings import NotificationsSettings
from notifications_service.templates import TemplateRenderer

__all__ = ["AdminUser", "Config", "Renderer", "Sender", "SessionDep", "Worker"]


def _config(request: Request) -> NotificationsSettings:
    settings: NotificationsSettings = request.app.state.settings.notifications
    return settings


SessionDep = Annotated[AsyncSession, Depends(get_session)]
Worker = Annotated[DeliveryWorker, Depends(provided(WORKER))]
Renderer = Annotated[TemplateRenderer, Depends(provided(RENDERER))]
Config = Annotated[NotificationsSettings, Depends(_config)]
# Every signed-in user holds `notifications:send`; it lets them reach only themselves.
Sender = Annotated[Principal, Depends(require_scope("notifications:send"))]
AdminUser = Annotated[Principal, Depends(require_role("admin"))]

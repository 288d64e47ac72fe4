"""FastAPI dependencies of the notifications service, each declared once as an `Annotated` alias."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from keelson.auth import Principal, require_role, require_scope
from keelson.db import get_session
from keelson.plugins import Key, PluginContainer
from notifications_service.delivery import DeliveryWorker
from notifications_service.plugin import RENDERER, WORKER
from notifications_service.settings import NotificationsSettings
from notifications_service.templates import TemplateRenderer

__all__ = ["AdminUser", "Config", "Renderer", "Sender", "SessionDep", "Worker"]

T = TypeVar("T")


def _provided(key: Key[T]) -> Callable[[Request], T]:
    """A dependency answering what the service's plugins provided under `key`."""

    def resolve(request: Request) -> T:
        container: PluginContainer = request.app.state.container
        return container.resolve(key)

    return resolve


def _config(request: Request) -> NotificationsSettings:
    settings: NotificationsSettings = request.app.state.settings.notifications
    return settings


SessionDep = Annotated[AsyncSession, Depends(get_session)]
Worker = Annotated[DeliveryWorker, Depends(_provided(WORKER))]
Renderer = Annotated[TemplateRenderer, Depends(_provided(RENDERER))]
Config = Annotated[NotificationsSettings, Depends(_config)]
# Every signed-in user holds `notifications:send`; it lets them reach only themselves.
Sender = Annotated[Principal, Depends(require_scope("notifications:send"))]
AdminUser = Annotated[Principal, Depends(require_role("admin"))]

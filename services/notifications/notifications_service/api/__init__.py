"""HTTP routers of the notifications service, one per resource."""

from __future__ import annotations

from fastapi import APIRouter

from notifications_service.api import dead_letters, notifications, preferences, webhooks

__all__ = ["routers"]

# The fixed paths come before `/{notification_id}`, which would otherwise match them.
routers: list[APIRouter] = [
    preferences.router,
    webhooks.router,
    dead_letters.router,
    notifications.router,
]

"""Audit events: security-relevant actions, written to the outbox with the change they record."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from keelson.events import AuditRecorded, Event
from keelson.outbox import add_to_outbox

__all__ = ["PRODUCER", "AuditAction", "audit", "emit"]

PRODUCER = "auth"


class AuditAction(StrEnum):
    REGISTERED = "registered"
    SIGNUP_FOR_EXISTING = "signup_for_existing_account"
    LOGIN_SUCCEEDED = "login_succeeded"
    LOGIN_FAILED = "login_failed"
    LOGIN_LOCKED = "login_locked"
    LOGGED_OUT = "logged_out"
    REFRESH_REUSED = "refresh_token_reused"
    PASSWORD_CHANGED = "password_changed"  # noqa: S105
    PASSWORD_RESET = "password_reset"  # noqa: S105
    EMAIL_VERIFIED = "email_verified"
    USER_UPDATED = "user_updated"
    USER_DELETED = "user_deleted"
    ADMIN_CREATED = "admin_created"


async def emit(db: AsyncSession, event: Event) -> None:
    """Queue a domain event in `db`'s transaction (relayed to the bus after commit)."""
    await add_to_outbox(db, event, producer=PRODUCER)


async def audit(
    db: AsyncSession,
    action: AuditAction,
    *,
    actor: str | None,
    target: str | None = None,
    **attrs: Any,
) -> None:
    await emit(db, AuditRecorded(actor=actor, action=action.value, target=target, attrs=attrs))

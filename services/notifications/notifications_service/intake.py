"""Where notifications come from: API requests (who may send to whom) and bus events."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import Callable
from typing import Any

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from keelson.auth import Principal
from keelson.errors import Forbidden, Unprocessable
from keelson.events import Envelope
from notifications_service.models import Channel, Contact
from notifications_service.recipients import (
    get_contact,
    get_endpoint,
    get_preferences,
    is_muted,
    remember_contact,
    set_phone,
)
from notifications_service.rendering import EVENT_TYPE, LINK_PATH, SEALED_TOKEN
from notifications_service.schemas import NotificationCreate
from notifications_service.settings import EventRoute, NotificationsSettings
from notifications_service.store import NewNotification, Queued, enqueue
from notifications_service.templates import TemplateRenderer

__all__ = ["SEND_ANY_SCOPE", "EventIntake", "accept_event", "submit_request"]

# Sending to someone else: admins and service accounts, never an ordinary user's token
# (those all carry `notifications:send`, which only lets a user reach themselves).
SEND_ANY_SCOPE = "notifications:send_any"
EVENTS_REQUESTER = "events"
# Auth announces a user's phone (and email) with this; where "yourself" is for SMS.
CONTACT_CHANGED = "auth.contact_changed"
_PHONE = re.compile(r"^\+[1-9][0-9]{6,14}$")


def may_send_to_anyone(principal: Principal) -> bool:
    return principal.has_scope(SEND_ANY_SCOPE) or principal.has_role("admin")


async def submit_request(
    db: AsyncSession,
    *,
    principal: Principal,
    request: NotificationCreate,
    settings: NotificationsSettings,
    renderer: TemplateRenderer,
) -> Queued:
    """Check the request and queue it (not committed)."""
    if request.template is not None and not renderer.exists(request.template):
        raise Unprocessable(f"unknown template {request.template!r}")
    if any(key.startswith("_") for key in request.data):
        raise Unprocessable("data keys starting with '_' are reserved")
    anyone = may_send_to_anyone(principal)
    recipient, owner, endpoint_id = await _recipient(
        db, principal=principal, request=request, settings=settings, anyone=anyone
    )
    preferences = await get_preferences(db, user_id=owner) if owner else None
    muted = preferences is not None and is_muted(
        preferences, channel=request.channel, category=request.category
    )
    locale = request.locale or (preferences.locale if preferences else None)
    return await enqueue(
        db,
        NewNotification(
            requested_by=principal.user_id,
            owner_id=owner,
            channel=request.channel,
            recipient=recipient,
            webhook_endpoint_id=endpoint_id,
            template=request.template,
            subject=request.subject,
            body=request.body,
            data=request.data,
            locale=locale or settings.default_locale,
            category=request.category,
            idempotency_key=request.idempotency_key,
            suppressed=muted,
        ),
    )


async def _recipient(
    db: AsyncSession,
    *,
    principal: Principal,
    request: NotificationCreate,
    settings: NotificationsSettings,
    anyone: bool,
) -> tuple[str, str | None, uuid.UUID | None]:
    """(recipient, owning user, webhook endpoint) for the request; 403 for someone else's."""
    others = Forbidden(f"sending to someone else needs the {SEND_ANY_SCOPE} scope")
    if request.channel is Channel.WEBHOOK:
        try:
            endpoint_id = uuid.UUID(request.to)
        except ValueError:
            raise Unprocessable("for webhooks, `to` is the id of a registered endpoint") from None
        endpoint = await get_endpoint(
            db, endpoint_id=endpoint_id, owner_id=None if anyone else principal.user_id
        )
        return endpoint.url, endpoint.owner_id, endpoint.id
    if request.channel is Channel.SLACK:
        if not anyone:
            raise others
        if not any(request.to.startswith(p) for p in settings.slack.allowed_url_prefixes):
            raise Unprocessable("`to` must be an allowed Slack incoming-webhook URL")
        return request.to, None, None
    if request.channel is Channel.SMS:
        if not _PHONE.match(request.to):
            raise Unprocessable("`to` must be a phone number in E.164 form (+15551234567)")
        recipient = request.to
        owner = await _owner(db, column=Contact.phone, value=recipient)
    else:
        try:
            recipient = validate_email(request.to, check_deliverability=False).normalized
        except EmailNotValidError:
            raise Unprocessable("`to` is not a valid email address") from None
        owner = await _owner(db, column=Contact.email, value=recipient)
    if owner != principal.user_id and not anyone:
        raise others
    return recipient, owner, None


async def _owner(db: AsyncSession, *, column: Any, value: str) -> str | None:
    """The user an address belongs to, as auth told us (case-insensitive for email)."""
    found = await db.scalar(
        select(Contact.user_id).where(func.lower(column) == value.lower()).limit(1)
    )
    return str(found) if found is not None else None


async def _known_address(db: AsyncSession, user_id: str | None, field: str) -> str | None:
    """The user's address auth vouched for, for an event that names only the user (a
    payment's receipt goes to the payer, whom payments knows by id alone)."""
    if user_id is None or field not in ("email", "phone"):
        return None
    contact = await get_contact(db, user_id=user_id)
    address = getattr(contact, field, None) if contact is not None else None
    return str(address) if address else None


async def accept_event(
    db: AsyncSession, envelope: Envelope, *, settings: NotificationsSettings
) -> Queued | None:
    """The notification an event calls for (not committed); None if it names no recipient.

    The event id is the idempotency key, so a redelivered event queues nothing new.
    """
    data: dict[str, Any] = dict(envelope.data)
    user_id = str(data["user_id"]) if data.get("user_id") else None
    if envelope.type == CONTACT_CHANGED and user_id and data.get("email"):
        phone = data.get("phone")
        await set_phone(
            db,
            user_id=user_id,
            email=str(data["email"]),
            phone=str(phone) if phone else None,
            as_of=envelope.occurred_at,
        )
    elif envelope.type.startswith("auth.") and user_id and data.get("email"):
        await remember_contact(db, user_id=user_id, email=str(data["email"]))
    route: EventRoute | None = settings.events.get(envelope.type)
    if route is None:
        return None
    recipient = data.get(route.recipient_field) or await _known_address(
        db, user_id, route.recipient_field
    )
    if not recipient:
        return None
    token = data.pop("token", None)
    if route.link_path and token:
        data.update({SEALED_TOKEN: token, LINK_PATH: route.link_path, EVENT_TYPE: envelope.type})
    preferences = await get_preferences(db, user_id=user_id) if user_id else None
    muted = (
        not route.transactional
        and preferences is not None
        and is_muted(preferences, channel=route.channel, category=route.category)
    )
    return await enqueue(
        db,
        NewNotification(
            requested_by=EVENTS_REQUESTER,
            owner_id=user_id,
            channel=route.channel,
            recipient=str(recipient),
            template=route.template,
            data=data,
            locale=(preferences.locale if preferences else None) or settings.default_locale,
            category=route.category,
            transactional=route.transactional,
            idempotency_key=envelope.id,
            source_event_id=envelope.id,
            suppressed=muted,
        ),
    )


class EventIntake:
    """The bus handler: each event's notification written on a kept connection.

    The bus hands a consumer its events one after another, so their round trips add up:
    a kept connection in autocommit mode makes a receipt one INSERT (no pool checkout,
    ping, BEGIN or COMMIT), and one connection per consumer lets several run at once.
    Each statement is idempotent, so autocommit loses nothing: a crash between two of
    them is repaired when the event is delivered again. A failed connection is dropped,
    the handler raises, and the bus delivers the event again.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        settings: NotificationsSettings,
        *,
        on_queued: Callable[[], None],
        connections: int = 1,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.on_queued = on_queued
        self._free: asyncio.Queue[AsyncConnection | None] = asyncio.Queue()
        for _ in range(connections):
            self._free.put_nowait(None)

    async def handle(self, envelope: Envelope) -> None:
        connection = await self._free.get()
        try:
            if connection is None:
                opened = await self.engine.connect()
                connection = await opened.execution_options(isolation_level="AUTOCOMMIT")
            async with AsyncSession(bind=connection) as db:
                queued = await accept_event(db, envelope, settings=self.settings)
        except Exception:
            await _close(connection)
            connection = None
            raise
        finally:
            self._free.put_nowait(connection)
        if queued is not None and queued.created:
            self.on_queued()

    async def close(self) -> None:
        """Close the kept connections (call once the bus no longer calls `handle`)."""
        while not self._free.empty():
            await _close(self._free.get_nowait())


async def _close(connection: AsyncConnection | None) -> None:
    if connection is not None:
        with contextlib.suppress(Exception):
            await connection.close()

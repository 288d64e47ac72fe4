"""Where notifications come from: API requests (who may send to whom) and bus events."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from keelson.auth import Principal
from keelson.errors import Forbidden, Unprocessable
from keelson.events import Envelope
from notifications_service.models import Channel, Contact, Preference
from notifications_service.recipients import (
    get_contacts,
    get_endpoint,
    get_preferences,
    get_preferences_of,
    is_muted,
    remember_contact,
    set_phone,
)
from notifications_service.rendering import EVENT_TYPE, LINK_PATH, SEALED_TOKEN
from notifications_service.schemas import NotificationCreate
from notifications_service.settings import EventRoute, NotificationsSettings
from notifications_service.store import NewNotification, Queued, enqueue, enqueue_many
from notifications_service.templates import TemplateRenderer

__all__ = ["SEND_ANY_SCOPE", "EventIntake", "accept_events", "submit_request"]

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


async def _update_contact(db: AsyncSession, envelope: Envelope) -> None:
    """Record the address (and phone) auth vouches for in its events."""
    data = envelope.data
    user_id = str(data["user_id"]) if data.get("user_id") else None
    if not (envelope.type.startswith("auth.") and user_id and data.get("email")):
        return
    if envelope.type == CONTACT_CHANGED:
        phone = data.get("phone")
        await set_phone(
            db,
            user_id=user_id,
            email=str(data["email"]),
            phone=str(phone) if phone else None,
            as_of=envelope.occurred_at,
        )
    else:
        await remember_contact(db, user_id=user_id, email=str(data["email"]))


def _notification(
    envelope: Envelope,
    route: EventRoute,
    *,
    preferences: Mapping[str, Preference],
    contacts: Mapping[str, Contact],
    settings: NotificationsSettings,
) -> NewNotification | None:
    """The notification an event calls for; None if it names no recipient.

    An event that names only the user (a payment's receipt goes to the payer, whom
    payments knows by id alone) goes to the address auth vouched for.
    """
    data: dict[str, Any] = dict(envelope.data)
    user_id = str(data["user_id"]) if data.get("user_id") else None
    recipient = data.get(route.recipient_field)
    contact = contacts.get(user_id) if user_id else None
    if not recipient and contact is not None and route.recipient_field in ("email", "phone"):
        recipient = getattr(contact, route.recipient_field)
    if not recipient:
        return None
    token = data.pop("token", None)
    if route.link_path and token:
        data.update({SEALED_TOKEN: token, LINK_PATH: route.link_path, EVENT_TYPE: envelope.type})
    preference = preferences.get(user_id) if user_id else None
    muted = (
        not route.transactional
        and preference is not None
        and is_muted(preference, channel=route.channel, category=route.category)
    )
    return NewNotification(
        requested_by=EVENTS_REQUESTER,
        owner_id=user_id,
        channel=route.channel,
        recipient=str(recipient),
        template=route.template,
        data=data,
        locale=(preference.locale if preference else None) or settings.default_locale,
        category=route.category,
        transactional=route.transactional,
        idempotency_key=envelope.id,
        source_event_id=envelope.id,
        suppressed=muted,
    )


async def accept_events(
    db: AsyncSession, envelopes: Sequence[Envelope], *, settings: NotificationsSettings
) -> tuple[set[str], dict[str, Exception]]:
    """Queue the notifications these events call for (not committed): (the channels of
    the new ones to send, the events that could not be made into one, by id).

    The event id is the idempotency key, checked by the unique index in the statement
    that inserts, so a redelivered event queues nothing new. A batch costs a few
    statements whatever its size: contacts first (in event order, so a later event sees
    an earlier one's address), then one read of the preferences and known addresses,
    then one INSERT of every row.
    """
    for envelope in envelopes:
        await _update_contact(db, envelope)
    routed = [
        (envelope, route)
        for envelope in envelopes
        if (route := settings.events.get(envelope.type)) is not None
    ]
    users = {str(e.data["user_id"]) for e, _ in routed if e.data.get("user_id")}
    preferences = await get_preferences_of(db, user_ids=users)
    unaddressed = {
        str(e.data["user_id"])
        for e, route in routed
        if e.data.get("user_id") and not e.data.get(route.recipient_field)
    }
    contacts = await get_contacts(db, user_ids=unaddressed)
    new: dict[str, NewNotification] = {}
    failed: dict[str, Exception] = {}
    for envelope, route in routed:
        try:
            notification = _notification(
                envelope, route, preferences=preferences, contacts=contacts, settings=settings
            )
        except Exception as exc:
            failed[envelope.id] = exc
            continue
        if notification is not None:
            new.setdefault(envelope.id, notification)  # the same event twice in one batch
    return await enqueue_many(db, list(new.values())), failed


class EventIntake:
    """The bus's batch handler: the events read together are queued in one transaction.

    The transaction holds each event's effect (its row, found again by the event id),
    so an event redelivered after a crash, or in the same batch, queues nothing twice;
    the bus acknowledges the batch only after the commit. If the batch fails in the
    database, each event is tried alone, so one bad event fails alone.
    Each consumer's batches run on a connection kept for the intake (`connections`, one
    per consumer): a pooled one past the pool's size would be opened and closed each time.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        settings: NotificationsSettings,
        *,
        on_queued: Callable[[Collection[str]], None],
        connections: int = 1,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.on_queued = on_queued
        self._free: asyncio.Queue[AsyncConnection | None] = asyncio.Queue()
        for _ in range(connections):
            self._free.put_nowait(None)

    async def handle_batch(self, envelopes: Sequence[Envelope]) -> dict[str, Exception]:
        try:
            return await self._accept(envelopes)
        except Exception:
            if len(envelopes) == 1:
                raise
        failed: dict[str, Exception] = {}
        for envelope in envelopes:
            try:
                failed.update(await self._accept([envelope]))
            except Exception as exc:
                failed[envelope.id] = exc
        return failed

    async def _accept(self, envelopes: Sequence[Envelope]) -> dict[str, Exception]:
        connection = await self._free.get()
        try:
            if connection is None:
                connection = await self.engine.connect()
            async with AsyncSession(bind=connection) as db, db.begin():
                channels, failed = await accept_events(db, envelopes, settings=self.settings)
        except Exception:
            await _close(connection)
            connection = None
            raise
        finally:
            self._free.put_nowait(connection)
        if channels:
            self.on_queued(channels)
        return failed

    async def close(self) -> None:
        """Close the kept connections (call once the bus no longer calls `handle_batch`)."""
        while not self._free.empty():
            await _close(self._free.get_nowait())


async def _close(connection: AsyncConnection | None) -> None:
    if connection is not None:
        with contextlib.suppress(Exception):
            await connection.close()

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
from notifications_service.models import Channel, Contact, Preference
from notifications_service.recipients import (
    get_endpoint,
    get_preferences,
    is_muted,
    remember_contact,
    set_phone,
)
from notifications_service.rendering import EVENT_TYPE, LINK_PATH, SEALED_TOKEN
from notifications_service.schemas import NotificationCreate
from notifications_service.settings import EventRoute, NotificationsSettings
from notifications_service.store import NewNotification, Queued, enqueue, enqueue_many
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


async def accept_event(
    db: AsyncSession, envelope: Envelope, *, settings: NotificationsSettings
) -> Queued | None:
    """The notification an event calls for (not committed); None if it names no recipient.

    The event id is the idempotency key, so a redelivered event queues nothing new.
    """
    new = await _notification_of(db, envelope, settings=settings)
    return None if new is None else await enqueue(db, new)


async def accept_events(
    db: AsyncSession, envelopes: list[Envelope], *, settings: NotificationsSettings
) -> list[bool]:
    """`accept_event` for a batch, in a few statements (not committed): whether each
    event queued a new notification.

    The users' preferences are read in one query and the notifications inserted in one.
    """
    planned = [await _plan(db, envelope, settings=settings) for envelope in envelopes]
    users = sorted({plan[1] for plan in planned if plan is not None and plan[1]})
    preferences: dict[str, Preference] = {}
    if users:
        found = await db.scalars(select(Preference).where(Preference.user_id.in_(users)))
        preferences = {p.user_id: p for p in found}
    news = [
        None if plan is None else _notification(*plan, preferences.get(plan[1] or ""), settings)
        for plan in planned
    ]
    created = await enqueue_many(db, [n for n in news if n is not None])
    return [n is not None and n.idempotency_key in created for n in news]


_Plan = tuple[Envelope, str | None, EventRoute, dict[str, Any]]


async def _plan(
    db: AsyncSession, envelope: Envelope, *, settings: NotificationsSettings
) -> _Plan | None:
    """Remember the addresses auth tells of; (event, user, route, data) if it is a message."""
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
    if route is None or not data.get(route.recipient_field):
        return None
    token = data.pop("token", None)
    if route.link_path and token:
        data.update({SEALED_TOKEN: token, LINK_PATH: route.link_path, EVENT_TYPE: envelope.type})
    return envelope, user_id, route, data


def _notification(
    envelope: Envelope,
    user_id: str | None,
    route: EventRoute,
    data: dict[str, Any],
    preferences: Preference | None,
    settings: NotificationsSettings,
) -> NewNotification:
    muted = (
        not route.transactional
        and preferences is not None
        and is_muted(preferences, channel=route.channel, category=route.category)
    )
    return NewNotification(
        requested_by=EVENTS_REQUESTER,
        owner_id=user_id,
        channel=route.channel,
        recipient=str(data[route.recipient_field]),
        template=route.template,
        data=data,
        locale=(preferences.locale if preferences else None) or settings.default_locale,
        category=route.category,
        transactional=route.transactional,
        idempotency_key=envelope.id,
        source_event_id=envelope.id,
        suppressed=muted,
    )


async def _notification_of(
    db: AsyncSession, envelope: Envelope, *, settings: NotificationsSettings
) -> NewNotification | None:
    plan = await _plan(db, envelope, settings=settings)
    if plan is None:
        return None
    user_id = plan[1]
    preferences = await get_preferences(db, user_id=user_id) if user_id else None
    return _notification(*plan, preferences, settings)


class EventIntake:
    """The bus handler: the events in flight written together, one transaction a batch.

    The bus hands each of its consumers events one after another, and several consumers
    run at once (`intake_consumers`); their handlers meet here. A writer takes every event
    waiting, writes their notifications in one transaction on a kept connection, and
    answers each handler when it has committed, so the bus acknowledges an event only once
    its notification is durable, and a commit (a WAL flush) is shared by the batch instead
    of paid per event. A batch that fails is written again one event per transaction, so
    only a failing event's handler raises (and the bus delivers that one again). Every
    statement is idempotent (the event id is the idempotency key): an event delivered
    twice queues one notification.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        settings: NotificationsSettings,
        *,
        on_queued: Callable[[], None],
        connections: int = 2,
        max_batch: int = 500,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.on_queued = on_queued
        self.max_batch = max_batch
        self._writers_wanted = connections
        self._waiting: asyncio.Queue[tuple[Envelope, asyncio.Future[bool]]] = asyncio.Queue()
        self._writers: list[asyncio.Task[None]] = []
        self._connections: set[AsyncConnection] = set()
        self._closed = False

    async def handle(self, envelope: Envelope) -> None:
        if self._closed:
            raise RuntimeError("the intake stopped")  # not acknowledged: delivered again
        if not self._writers:
            self._writers = [
                asyncio.create_task(self._write_loop(), name=f"notifications-intake-{n}")
                for n in range(self._writers_wanted)
            ]
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.put_nowait((envelope, done))
        if await done:
            self.on_queued()

    async def _write_loop(self) -> None:
        connection: AsyncConnection | None = None
        while True:
            batch = [await self._waiting.get()]
            while len(batch) < self.max_batch and not self._waiting.empty():
                batch.append(self._waiting.get_nowait())
            # One lock order for every writer: two batches never wait on each other in a cycle.
            batch.sort(key=lambda item: item[0].id)
            try:
                connection = connection or await self._connect()
                created = await self._write(connection, [envelope for envelope, _ in batch])
            except asyncio.CancelledError:
                _fail(batch, RuntimeError("the intake stopped"))
                raise
            except Exception:
                await self._drop(connection)
                try:
                    connection = await self._write_each(batch)
                except asyncio.CancelledError:
                    _fail(batch, RuntimeError("the intake stopped"))
                    raise
                continue
            for (_, done), was_created in zip(batch, created, strict=True):
                if not done.done():
                    done.set_result(was_created)

    async def _connect(self) -> AsyncConnection:
        connection = await self.engine.connect()
        self._connections.add(connection)
        return connection

    async def _drop(self, connection: AsyncConnection | None) -> None:
        if connection is not None:
            self._connections.discard(connection)
            await _close(connection)

    async def _write(self, connection: AsyncConnection, envelopes: list[Envelope]) -> list[bool]:
        """The notifications of `envelopes` in one transaction: for each, whether it is new."""
        async with AsyncSession(bind=connection) as db, db.begin():
            return await accept_events(db, envelopes, settings=self.settings)

    async def _write_each(
        self, batch: list[tuple[Envelope, asyncio.Future[bool]]]
    ) -> AsyncConnection | None:
        """A failed batch again, an event a transaction; the failures go to their handlers."""
        connection: AsyncConnection | None = None
        for envelope, done in batch:
            try:
                connection = connection or await self._connect()
                [created] = await self._write(connection, [envelope])
            except Exception as exc:
                await self._drop(connection)
                connection = None
                if not done.done():
                    done.set_exception(exc)
                continue
            if not done.done():
                done.set_result(created)
        return connection

    async def close(self) -> None:
        """Stop the writers and close their connections (once the bus no longer calls)."""
        self._closed = True
        for task in self._writers:
            task.cancel()
        for task in self._writers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._writers = []
        waiting = []
        while not self._waiting.empty():
            waiting.append(self._waiting.get_nowait())
        _fail(waiting, RuntimeError("the intake stopped"))
        for connection in list(self._connections):
            await self._drop(connection)


def _fail(batch: list[tuple[Envelope, asyncio.Future[bool]]], error: Exception) -> None:
    for _, done in batch:
        if not done.done():
            done.set_exception(error)


async def _close(connection: AsyncConnection | None) -> None:
    if connection is not None:
        with contextlib.suppress(Exception):
            await connection.close()

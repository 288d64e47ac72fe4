"""Who may be sent what: users' known addresses, their opt-outs and webhook endpoints."""

from __future__ import annotations

import secrets
import uuid
from base64 import b64encode
from collections.abc import Collection
from datetime import datetime

from sqlalchemy import delete, func, or_, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from keelson.errors import Conflict, NotFound
from notifications_service.models import Contact, Preference, WebhookEndpoint

__all__ = [
    "create_endpoint",
    "delete_endpoint",
    "get_contacts",
    "get_endpoint",
    "get_preferences",
    "get_preferences_of",
    "is_muted",
    "list_endpoints",
    "new_webhook_secret",
    "put_preferences",
    "remember_contact",
    "set_phone",
]


async def remember_contact(
    db: AsyncSession, *, user_id: str, email: str | None = None, phone: str | None = None
) -> None:
    """Record an address auth vouched for (a registration): the user's own, from now on."""
    values = {k: v for k, v in {"email": email, "phone": phone}.items() if v is not None}
    await db.execute(
        insert(Contact)
        .values(user_id=user_id, **values)
        .on_conflict_do_update(
            index_elements=[Contact.user_id], set_={**values, "updated_at": func.now()}
        )
    )


async def set_phone(
    db: AsyncSession, *, user_id: str, email: str, phone: str | None, as_of: datetime
) -> None:
    """The user's phone as auth says it is `as_of` (None: none); an older change loses."""
    await db.execute(
        insert(Contact)
        .values(user_id=user_id, email=email, phone=phone, phone_changed_at=as_of)
        .on_conflict_do_update(
            index_elements=[Contact.user_id],
            set_={
                "email": email,
                "phone": phone,
                "phone_changed_at": as_of,
                "updated_at": func.now(),
            },
            where=or_(Contact.phone_changed_at.is_(None), Contact.phone_changed_at < as_of),
        )
    )


async def get_contacts(db: AsyncSession, *, user_ids: Collection[str]) -> dict[str, Contact]:
    """The known addresses of these users, by user id (one query)."""
    if not user_ids:
        return {}
    rows = await db.scalars(select(Contact).where(Contact.user_id.in_(user_ids)))
    return {row.user_id: row for row in rows}


async def get_preferences(db: AsyncSession, *, user_id: str) -> Preference:
    """The user's preferences, or the defaults (nothing muted) when none were saved."""
    found = await db.get(Preference, user_id)
    return found or Preference(user_id=user_id, muted_channels=[], muted_categories=[], locale=None)


async def get_preferences_of(
    db: AsyncSession, *, user_ids: Collection[str]
) -> dict[str, Preference]:
    """The saved preferences of these users, by user id (one query; a user without
    any is absent: nothing muted)."""
    if not user_ids:
        return {}
    rows = await db.scalars(select(Preference).where(Preference.user_id.in_(user_ids)))
    return {row.user_id: row for row in rows}


async def put_preferences(
    db: AsyncSession,
    *,
    user_id: str,
    muted_channels: list[str],
    muted_categories: list[str],
    locale: str | None,
) -> Preference:
    values = {
        "muted_channels": sorted(set(muted_channels)),
        "muted_categories": sorted(set(muted_categories)),
        "locale": locale,
    }
    await db.execute(
        insert(Preference)
        .values(user_id=user_id, **values)
        .on_conflict_do_update(
            index_elements=[Preference.user_id], set_={**values, "updated_at": func.now()}
        )
    )
    saved = await db.get(Preference, user_id, populate_existing=True)
    assert saved is not None
    return saved


def is_muted(preference: Preference, *, channel: str, category: str) -> bool:
    return channel in preference.muted_channels or category in preference.muted_categories


def new_webhook_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and 32 random bytes in base64."""
    return "whsec_" + b64encode(secrets.token_bytes(32)).decode()


async def create_endpoint(
    db: AsyncSession, *, owner_id: str, url: str, description: str | None, limit: int
) -> WebhookEndpoint:
    count = await db.scalar(select(func.count()).where(WebhookEndpoint.owner_id == owner_id))
    if (count or 0) >= limit:
        raise Conflict(f"at most {limit} webhook endpoints per user")
    endpoint = WebhookEndpoint(
        owner_id=owner_id, url=url, description=description, secret=new_webhook_secret()
    )
    db.add(endpoint)
    await db.flush()
    await db.refresh(endpoint)
    return endpoint


async def list_endpoints(db: AsyncSession, *, owner_id: str) -> list[WebhookEndpoint]:
    rows = await db.scalars(
        select(WebhookEndpoint)
        .where(WebhookEndpoint.owner_id == owner_id)
        .order_by(WebhookEndpoint.created_at)
    )
    return list(rows)


async def get_endpoint(
    db: AsyncSession, *, endpoint_id: uuid.UUID, owner_id: str | None
) -> WebhookEndpoint:
    """The endpoint if `owner_id` owns it (None: any owner); 404 otherwise."""
    endpoint = await db.get(WebhookEndpoint, endpoint_id)
    if endpoint is None or (owner_id is not None and endpoint.owner_id != owner_id):
        raise NotFound("no such webhook endpoint")
    return endpoint


async def delete_endpoint(db: AsyncSession, *, endpoint_id: uuid.UUID, owner_id: str) -> None:
    result = await db.execute(
        delete(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.owner_id == owner_id)
        .returning(WebhookEndpoint.id)
    )
    if result.first() is None:
        raise NotFound("no such webhook endpoint")

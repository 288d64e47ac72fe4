"""Payment intents: created once per idempotency key, read by their owner, canceled."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from keelson import monitor
from keelson.auth import Principal
from keelson.db import advisory_xact_lock
from keelson.errors import Conflict, IdempotencyConflict, NotFound
from keelson.payment import PaymentProvider
from payments_service.customers import customer_of
from payments_service.idempotency import fingerprint, provider_key
from payments_service.lifecycle import Changes, move
from payments_service.models import Intent
from payments_service.schemas import IntentCreate
from payments_service.states import IntentStatus, status_of

__all__ = ["cancel_intent", "create_intent", "find_intent", "list_intents", "visible_to"]


def visible_to(principal: Principal) -> Select[Intent]:
    """Intents the caller may see: its own, or every one for an admin."""
    query = select(Intent)
    if not principal.has_role("admin"):
        query = query.where(Intent.user_id == principal.user_id)
    return query


async def find_intent(
    db: AsyncSession, principal: Principal, intent_id: uuid.UUID, *, for_update: bool = False
) -> Intent:
    """The intent if the caller may see it; another user's intent is 404, as is no intent."""
    query = visible_to(principal).where(Intent.id == intent_id)
    if for_update:
        query = query.with_for_update()
    intent = await db.scalar(query)
    if intent is None:
        raise NotFound("no such payment intent")
    return intent


async def create_intent(
    db: AsyncSession,
    provider: PaymentProvider,
    *,
    principal: Principal,
    body: IntentCreate,
    idempotency_key: str,
) -> tuple[Intent, bool]:
    """The intent for this key and whether it was created now.

    Requests with the same key take one advisory lock in turn, so of twenty concurrent
    ones the first creates and the rest find its row. The provider call is made under
    the lock with a key derived from the client's: a crash after the call and before the
    commit leaves nothing here, and the client's retry gets the provider's first answer.
    """
    user_id = principal.user_id
    digest = fingerprint(body.model_dump(mode="json"))
    async with db.begin():
        await advisory_xact_lock(db, f"keelson.payments.intent:{user_id}:{idempotency_key}")
        existing = await db.scalar(
            select(Intent).where(
                Intent.user_id == user_id, Intent.idempotency_key == idempotency_key
            )
        )
        if existing is not None:
            if existing.request_hash != digest:
                raise IdempotencyConflict(
                    "this Idempotency-Key was used for a payment intent with another body",
                    conflicting_intent=str(existing.id),
                )
            return existing, False
        customer = await customer_of(db, user_id=user_id, provider=provider.name)
        created = await provider.create_intent(
            amount=body.amount,
            currency=body.currency,
            customer=customer.provider_id if customer else None,
            description=body.description,
            metadata={**body.metadata, "keelson_user_id": user_id},
            idempotency_key=provider_key("intent", provider.name, user_id, idempotency_key),
        )
        intent = Intent(
            user_id=user_id,
            provider=provider.name,
            provider_id=created.id,
            customer_provider_id=customer.provider_id if customer else None,
            client_secret=created.client_secret,
            amount=body.amount,
            currency=body.currency,
            description=body.description,
            attrs=body.metadata,
            status=status_of(created).value,
            amount_received=0,
            amount_refunded=0,
            livemode=created.livemode,
            idempotency_key=idempotency_key,
            request_hash=digest,
        )
        db.add(intent)
        await db.flush()
        changes = Changes(intent)
        changes.record(
            kind="created",
            source="api",
            to_status=intent.status,
            amount=intent.amount,
            data={"provider": provider.name, "provider_id": created.id},
        )
        await changes.write(db)
    monitor.add_breadcrumb(
        "payment intent created",
        category="payment",
        intent_id=str(intent.id),
        amount=intent.amount,
        currency=intent.currency,
    )
    return intent, True


async def list_intents(
    db: AsyncSession,
    principal: Principal,
    *,
    status: IntentStatus | None,
    after: int | None,
    limit: int,
) -> tuple[Sequence[Intent], int | None]:
    """Newest first; `after` is the cursor of the previous page. Returns the next cursor."""
    query = visible_to(principal).order_by(Intent.seq.desc()).limit(limit + 1)
    if status is not None:
        query = query.where(Intent.status == status.value)
    if after is not None:
        query = query.where(Intent.seq < after)
    rows = (await db.scalars(query)).all()
    page = rows[:limit]
    return page, page[-1].seq if len(rows) > limit else None


async def cancel_intent(
    db: AsyncSession, provider: PaymentProvider, *, principal: Principal, intent_id: uuid.UUID
) -> Intent:
    """Cancel at the provider, then here; canceling a canceled intent answers it again."""
    async with db.begin():
        intent = await find_intent(db, principal, intent_id, for_update=True)
        current = IntentStatus(intent.status)
        if current is IntentStatus.CANCELED:
            return intent
        if current not in (IntentStatus.REQUIRES_PAYMENT_METHOD, IntentStatus.FAILED):
            raise Conflict(f"a payment intent in status {current} can't be canceled")
        canceled = await provider.cancel_intent(
            intent.provider_id, idempotency_key=provider_key("cancel", intent.provider_id)
        )
        changes = Changes(intent)
        move(changes, status_of(canceled), source="api", data={"by": principal.user_id})
        await changes.write(db)
    return intent

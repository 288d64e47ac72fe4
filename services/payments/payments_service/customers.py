"""The caller's customer at the provider, created once."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keelson.db import advisory_xact_lock
from keelson.payment import PaymentProvider
from payments_service.idempotency import provider_key
from payments_service.models import Customer

__all__ = ["customer_of", "ensure_customer"]


async def customer_of(db: AsyncSession, *, user_id: str, provider: str) -> Customer | None:
    return await db.scalar(
        select(Customer).where(Customer.user_id == user_id, Customer.provider == provider)
    )


async def ensure_customer(
    db: AsyncSession, provider: PaymentProvider, *, user_id: str, email: str | None
) -> tuple[Customer, bool]:
    """The user's customer and whether it was created now (concurrent calls make one)."""
    async with db.begin():
        await advisory_xact_lock(db, f"keelson.payments.customer:{user_id}")
        existing = await customer_of(db, user_id=user_id, provider=provider.name)
        if existing is not None:
            return existing, False
        created = await provider.create_customer(
            email=email,
            metadata={"keelson_user_id": user_id},
            idempotency_key=provider_key("customer", provider.name, user_id),
        )
        customer = Customer(
            user_id=user_id,
            provider=provider.name,
            provider_id=created.id,
            email=created.email,
            livemode=created.livemode,
        )
        db.add(customer)
    return customer, True

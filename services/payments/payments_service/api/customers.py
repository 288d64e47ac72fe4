"""The caller's customer at the payment provider."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from payments_service.customers import ensure_customer
from payments_service.deps import CurrentUser, Provider, SessionDep
from payments_service.schemas import CustomerCreate, CustomerPublic

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/payments/customers", tags=["customers"])


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_customer(
    user: CurrentUser,
    db: SessionDep,
    provider: Provider,
    response: Response,
    body: CustomerCreate | None = None,
) -> CustomerPublic:
    """Created once per user; calling again answers the same customer (200)."""
    customer, created = await ensure_customer(
        db, provider, user_id=user.user_id, email=body.email if body else None
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return CustomerPublic.of(customer)

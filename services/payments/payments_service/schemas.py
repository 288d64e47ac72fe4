"""What clients send to and receive from the payments API."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from payments_service.models import Customer, Intent, LedgerEntry, Refund

__all__ = [
    "CustomerCreate",
    "CustomerPublic",
    "IntentCreate",
    "IntentPage",
    "IntentPublic",
    "LedgerEntryPublic",
    "RefundCreate",
    "RefundPublic",
    "RefundReason",
]

_Text = Annotated[str, StringConstraints(max_length=500, pattern=r"^[^\x00-\x1f\x7f]*$")]
_MetaKey = Annotated[
    str, StringConstraints(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_.\-]+$")
]
_MetaValue = Annotated[str, StringConstraints(max_length=500, pattern=r"^[^\x00-\x1f\x7f]*$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CustomerCreate(_Strict):
    email: (
        Annotated[str, StringConstraints(max_length=320, pattern=r"^[^\s@]+@[^\s@]+$")] | None
    ) = None


class CustomerPublic(BaseModel):
    id: uuid.UUID
    provider_id: str
    email: str | None
    livemode: bool
    created_at: datetime

    @classmethod
    def of(cls, customer: Customer) -> CustomerPublic:
        return cls(
            id=customer.id,
            provider_id=customer.provider_id,
            email=customer.email,
            livemode=customer.livemode,
            created_at=customer.created_at,
        )


class IntentCreate(_Strict):
    amount: int = Field(gt=0, le=99_999_999, description="in minor units (cents)")
    currency: Annotated[str, StringConstraints(min_length=3, max_length=3)]
    description: _Text | None = None
    metadata: dict[_MetaKey, _MetaValue] = Field(default_factory=dict, max_length=20)

    @field_validator("currency")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()


class IntentPublic(BaseModel):
    id: uuid.UUID
    provider_id: str
    client_secret: str | None
    status: str
    amount: int
    amount_received: int
    amount_refunded: int
    currency: str
    description: str | None
    metadata: dict[str, str]
    livemode: bool
    sandbox: bool
    created_at: datetime

    @classmethod
    def of(cls, intent: Intent) -> IntentPublic:
        return cls(
            id=intent.id,
            provider_id=intent.provider_id,
            client_secret=intent.client_secret,
            status=intent.status,
            amount=intent.amount,
            amount_received=intent.amount_received,
            amount_refunded=intent.amount_refunded,
            currency=intent.currency,
            description=intent.description,
            metadata=dict(intent.attrs),
            livemode=intent.livemode,
            sandbox=intent.provider == "sandbox",
            created_at=intent.created_at,
        )


class IntentPage(BaseModel):
    items: list[IntentPublic]
    next_cursor: str | None


class RefundReason(StrEnum):
    DUPLICATE = "duplicate"
    FRAUDULENT = "fraudulent"
    REQUESTED_BY_CUSTOMER = "requested_by_customer"


class RefundCreate(_Strict):
    amount: int | None = Field(None, gt=0, le=99_999_999, description="default: all that is left")
    reason: RefundReason | None = None


class RefundPublic(BaseModel):
    id: uuid.UUID
    intent_id: uuid.UUID
    provider_id: str
    amount: int
    reason: str | None
    status: str
    created_at: datetime

    @classmethod
    def of(cls, refund: Refund) -> RefundPublic:
        return cls(
            id=refund.id,
            intent_id=refund.intent_id,
            provider_id=refund.provider_id,
            amount=refund.amount,
            reason=refund.reason,
            status=refund.status,
            created_at=refund.created_at,
        )


class LedgerEntryPublic(BaseModel):
    id: int
    kind: str
    source: str
    from_status: str | None
    to_status: str | None
    amount: int | None
    provider_event_id: str | None
    data: dict[str, Any]
    created_at: datetime

    @classmethod
    def of(cls, entry: LedgerEntry) -> LedgerEntryPublic:
        return cls(
            id=entry.id,
            kind=entry.kind,
            source=entry.source,
            from_status=entry.from_status,
            to_status=entry.to_status,
            amount=entry.amount,
            provider_event_id=entry.provider_event_id,
            data=entry.data,
            created_at=entry.created_at,
        )

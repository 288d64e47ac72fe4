"""Event contracts: versioned pydantic models and the envelope they travel in.

An event class names its topic in `type` and its schema version in `version`; defining
the class registers it, so an envelope read off the bus parses back into the right class
with `parse_event`. A breaking change to a contract is a new class with a higher
`version` (the old one stays registered for events already in flight).
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator

from keelson.logging import trace_id_var

__all__ = [
    "AuditRecorded",
    "DisputeOpened",
    "EmailVerificationRequested",
    "Envelope",
    "Event",
    "NotificationDeliveryFailed",
    "NotificationSendRequested",
    "PasswordResetRequested",
    "PaymentCanceled",
    "PaymentFailed",
    "PaymentProcessing",
    "PaymentSucceeded",
    "RefundSucceeded",
    "SignUpForExistingAccount",
    "UnknownEventError",
    "UserLoggedIn",
    "UserRegistered",
    "event_class",
    "parse_event",
]

_TOPIC = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)+$")
_REGISTRY: dict[tuple[str, int], type[Event]] = {}


class UnknownEventError(LookupError):
    """No event class is registered for an envelope's type and version."""


def _now() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    return str(uuid.uuid4())


class Envelope(BaseModel):
    """What travels on the bus: the event's data plus who, when and which trace."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(default_factory=_new_id)
    type: str
    version: int = Field(1, ge=1)
    occurred_at: datetime = Field(default_factory=_now)
    producer: str
    trace_id: str | None = None
    data: dict[str, Any] = {}

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Envelope:
        return cls.model_validate_json(raw)


class Event(BaseModel):
    """Base of every contract; subclasses set `type` (the topic) and `version`."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    type: ClassVar[str]
    version: ClassVar[int] = 1
    # True for events that carry a secret (a sealed action token): the outbox relay
    # deletes the row once it is published instead of keeping it for the retention period.
    purge_on_publish: ClassVar[bool] = False

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "type" not in cls.__dict__:
            return
        if not _TOPIC.match(cls.type):
            raise ValueError(f"event type {cls.type!r} must look like 'service.event_name'")
        key = (cls.type, cls.version)
        if key in _REGISTRY and _REGISTRY[key].__qualname__ != cls.__qualname__:
            raise ValueError(f"event {cls.type} v{cls.version} is already defined")
        _REGISTRY[key] = cls

    def envelope(self, *, producer: str, trace_id: str | None = None) -> Envelope:
        """Wrap in a new envelope; the trace id defaults to the one bound to this context."""
        return Envelope(
            type=self.type,
            version=self.version,
            producer=producer,
            trace_id=trace_id if trace_id is not None else trace_id_var.get(),
            data=self.model_dump(mode="json"),
        )

    @classmethod
    def from_envelope(cls, envelope: Envelope) -> Self:
        """Parse an envelope that must hold this class's type and version."""
        if "type" not in cls.__dict__:
            raise TypeError("call from_envelope on a concrete event class, or use parse_event")
        if (envelope.type, envelope.version) != (cls.type, cls.version):
            raise UnknownEventError(
                f"{cls.__name__} is {cls.type} v{cls.version}, "
                f"not {envelope.type} v{envelope.version}"
            )
        return cls.model_validate(envelope.data)


def event_class(type_: str, version: int = 1) -> type[Event]:
    try:
        return _REGISTRY[(type_, version)]
    except KeyError:
        raise UnknownEventError(f"no event class for {type_} v{version}") from None


def purged_on_publish(type_: str, version: int = 1) -> bool:
    """Whether the outbox row of this event is deleted once published (unknown: kept)."""
    found = _REGISTRY.get((type_, version))
    return found is not None and found.purge_on_publish


def parse_event(envelope: Envelope) -> Event:
    """The registered event class for the envelope's type and version, validated."""
    return event_class(envelope.type, envelope.version).model_validate(envelope.data)


class _Money(Event):
    amount: int = Field(ge=0, description="in minor units (cents)")
    currency: str = Field(min_length=3, max_length=3, description="ISO 4217, upper case")

    @field_validator("currency")
    @classmethod
    def _upper_currency(cls, value: str) -> str:
        if not value.isalpha():
            raise ValueError("currency must be a three-letter ISO 4217 code")
        return value.upper()


class UserRegistered(Event):
    type = "auth.user_registered"

    user_id: str
    email: str
    name: str | None = None


class PasswordResetRequested(Event):
    type = "auth.password_reset_requested"
    purge_on_publish = True

    user_id: str
    email: str
    token: str
    expires_at: datetime


class EmailVerificationRequested(Event):
    type = "auth.email_verification_requested"
    purge_on_publish = True

    user_id: str
    email: str
    token: str
    expires_at: datetime


class SignUpForExistingAccount(Event):
    """Someone signed up with the address of an existing account; its owner is told so
    (with a way to reset the password), since the sign-up answer says nothing either way."""

    type = "auth.signup_for_existing_account"

    user_id: str
    email: str


class ContactChanged(Event):
    """A user's own addresses as they are after a change (`phone` None: no phone now);
    `occurred_at` orders changes that arrive out of order."""

    type = "auth.contact_changed"

    user_id: str
    email: str
    phone: str | None = None


class UserLoggedIn(Event):
    type = "auth.user_logged_in"

    user_id: str
    ip: str | None = None
    user_agent: str | None = None


class AuditRecorded(Event):
    """Something security-relevant happened: who did what to whom."""

    type = "auth.audit"

    actor: str | None
    action: str
    target: str | None = None
    attrs: dict[str, Any] = {}


class PaymentSucceeded(_Money):
    type = "payments.payment_succeeded"

    payment_id: str
    user_id: str | None = None
    email: str | None = None
    provider_ref: str | None = None


class PaymentProcessing(_Money):
    """The provider is processing the payment (a bank transfer, a delayed capture)."""

    type = "payments.payment_processing"

    payment_id: str
    user_id: str | None = None
    provider_ref: str | None = None


class PaymentFailed(_Money):
    type = "payments.payment_failed"

    payment_id: str
    user_id: str | None = None
    email: str | None = None
    reason: str | None = None


class RefundSucceeded(_Money):
    type = "payments.refund_succeeded"

    refund_id: str
    payment_id: str
    user_id: str | None = None
    email: str | None = None


class PaymentCanceled(_Money):
    type = "payments.payment_canceled"

    payment_id: str
    user_id: str | None = None


class DisputeOpened(_Money):
    """A cardholder disputed a payment (a chargeback): the amount is held by the bank."""

    type = "payments.dispute_opened"

    dispute_id: str
    payment_id: str
    user_id: str | None = None
    reason: str | None = None


class NotificationDeliveryFailed(Event):
    """A notification gave up after its retries (it is in the dead-letter state)."""

    type = "notifications.delivery_failed"

    notification_id: str
    channel: str
    recipient: str
    error: str
    attempts: int = Field(ge=1)
    source_event_id: str | None = None


class NotificationSendRequested(Event):
    """Ask the notifications service to send a template on a channel."""

    type = "notifications.send_requested"

    channel: str = Field(description="email, sms, slack or webhook")
    recipient: str
    template: str
    context: dict[str, Any] = {}
    user_id: str | None = None
    idempotency_key: str | None = None

"""The provider protocol and the plain objects it answers with (Stripe's vocabulary)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import stripe
from prometheus_client import Counter, Histogram

from keelson.errors import BadRequest, IdempotencyConflict, KeelsonError, PaymentInvalid
from keelson.monitor import trace

__all__ = [
    "PROVIDER_CALL_SECONDS",
    "PROVIDER_ERRORS",
    "PaymentProvider",
    "ProviderBase",
    "ProviderCustomer",
    "ProviderEvent",
    "ProviderIntent",
    "ProviderRefund",
    "check_replay",
    "measured",
    "parse_stripe_event",
    "request_digest",
]

PROVIDER_CALL_SECONDS = Histogram(
    "payment_provider_call_seconds",
    "Payment provider call latency",
    ["provider", "operation"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PROVIDER_ERRORS = Counter(
    "payment_provider_errors_total",
    "Payment provider calls that failed, by error kind",
    ["provider", "operation", "kind"],
)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ProviderIntent:
    """A payment intent as the provider holds it; `status` is Stripe's word for it."""

    id: str
    status: str
    amount: int
    currency: str
    client_secret: str | None
    customer: str | None
    livemode: bool
    created: int
    amount_received: int = 0
    metadata: Mapping[str, str] = field(default_factory=dict)
    decline_code: str | None = None

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> ProviderIntent:
        """From a payment_intent object (an API answer or a webhook's `data.object`)."""
        error = obj.get("last_payment_error") or {}
        return cls(
            id=str(obj["id"]),
            status=str(obj["status"]),
            amount=int(obj["amount"]),
            currency=str(obj["currency"]).lower(),
            client_secret=obj.get("client_secret"),
            customer=obj.get("customer") if isinstance(obj.get("customer"), str) else None,
            livemode=bool(obj.get("livemode", False)),
            created=int(obj.get("created") or 0),
            amount_received=int(obj.get("amount_received") or 0),
            metadata=dict(obj.get("metadata") or {}),
            decline_code=error.get("decline_code") or error.get("code"),
        )


@dataclass(frozen=True, slots=True)
class ProviderCustomer:
    id: str
    email: str | None
    livemode: bool


@dataclass(frozen=True, slots=True)
class ProviderRefund:
    id: str
    payment_intent: str
    amount: int
    currency: str
    status: str
    livemode: bool


@dataclass(frozen=True, slots=True)
class ProviderEvent:
    """A verified webhook event: `object` is its `data.object`, `created` its Unix time."""

    id: str
    type: str
    created: int
    object: Mapping[str, Any]
    livemode: bool


class PaymentProvider(Protocol):
    """What a service asks of a payment provider.

    Every call that creates or changes something takes an idempotency key: the same key
    returns the first call's result, so a retry after a timeout never charges twice.
    """

    name: str
    sandbox: bool

    async def create_customer(
        self, *, email: str | None, metadata: Mapping[str, str], idempotency_key: str
    ) -> ProviderCustomer: ...

    async def create_intent(
        self,
        *,
        amount: int,
        currency: str,
        customer: str | None,
        description: str | None,
        metadata: Mapping[str, str],
        idempotency_key: str,
    ) -> ProviderIntent: ...

    async def retrieve_intent(self, intent_id: str) -> ProviderIntent: ...

    async def cancel_intent(self, intent_id: str, *, idempotency_key: str) -> ProviderIntent: ...

    async def create_refund(
        self,
        *,
        intent_id: str,
        amount: int,
        reason: str | None,
        metadata: Mapping[str, str],
        idempotency_key: str,
    ) -> ProviderRefund: ...

    async def list_intents(self, *, since: int, limit: int) -> list[ProviderIntent]:
        """Intents created at or after the Unix time `since`, newest first, at most `limit`."""
        ...

    def verify_webhook(self, payload: bytes, signature: str | None) -> ProviderEvent:
        """The event in `payload` if `signature` holds and is recent; `BadRequest` if not."""
        ...

    async def aclose(self) -> None: ...


def parse_stripe_event(
    payload: bytes, signature: str | None, secret: str, *, tolerance: int
) -> ProviderEvent:
    """Verify a Stripe-signed webhook (`stripe.Webhook.construct_event`) and read it.

    Raises `BadRequest` for a missing, wrong or stale signature and for a body that is
    not an event; the reason given never includes the secret.
    """
    if not signature or len(signature) > 4096:
        raise BadRequest("missing or oversized Stripe-Signature header")
    try:
        event = stripe.Webhook.construct_event(payload, signature, secret, tolerance=tolerance)
        data = event.to_dict(recursive=False)
        obj = event["data"]["object"].to_dict()
        return ProviderEvent(
            id=str(data["id"]),
            type=str(data["type"]),
            created=int(data["created"]),
            object=obj,
            livemode=bool(data.get("livemode", False)),
        )
    except stripe.SignatureVerificationError:
        raise BadRequest("webhook signature is invalid or too old") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise BadRequest("webhook body is not a Stripe event") from None


@asynccontextmanager
async def _timed(provider: str, operation: str) -> AsyncIterator[None]:
    started = time.perf_counter()
    try:
        with trace(f"{provider}.{operation}", op="payment.provider"):
            yield
    except KeelsonError as exc:
        PROVIDER_ERRORS.labels(provider, operation, exc.slug).inc()
        raise
    finally:
        PROVIDER_CALL_SECONDS.labels(provider, operation).observe(time.perf_counter() - started)


async def measured(provider: str, operation: str, call: Callable[[], Awaitable[T]]) -> T:
    """Await `call()`, observing its latency and counting the error kind it ends with."""
    async with _timed(provider, operation):
        return await call()


def request_digest(params: Mapping[str, Any]) -> str:
    """The fingerprint of an idempotent call's parameters, kept beside its key."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def idempotency_conflict() -> IdempotencyConflict:
    return IdempotencyConflict("the idempotency key was used with other parameters")


def check_replay(first_digest: str | None, digest: str) -> None:
    """A call replayed under a used idempotency key must have the first call's parameters."""
    if first_digest != digest:
        raise idempotency_conflict()


class ProviderBase:
    """What every provider shares: timed calls whose errors are mapped in one place, and
    the verification of Stripe-signed webhooks."""

    name: str

    def __init__(self, *, webhook_secret: str | None, webhook_tolerance: int) -> None:
        self._webhook_secret = webhook_secret
        self._tolerance = webhook_tolerance

    def _error(self, exc: Exception) -> KeelsonError | None:
        """The `keelson.errors` member for a failure of this provider's client (None: as is)."""
        return None

    async def _call(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        """Await `call()`, timed and counted as `operation`, its client errors mapped."""

        async def mapped() -> T:
            try:
                return await call()
            except Exception as exc:
                error = self._error(exc)
                if error is None:
                    raise
                raise error from None

        return await measured(self.name, operation, mapped)

    def verify_webhook(self, payload: bytes, signature: str | None) -> ProviderEvent:
        if not self._webhook_secret:
            raise PaymentInvalid("no webhook secret is configured")
        return parse_stripe_event(
            payload, signature, self._webhook_secret, tolerance=self._tolerance
        )

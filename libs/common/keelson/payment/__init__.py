"""Payments for every service: one provider protocol, Stripe and an in-database sandbox.

PaymentProvider ── StripeProvider (the official `stripe` SDK, async, retries, idempotency)
                └─ SandboxProvider (rows in the service's schema, ids `sandbox_`, test mode)
create_provider(settings, engine) picks Stripe when an API key is set, the sandbox otherwise.
Errors are `keelson.errors` members: PaymentDeclined (402), PaymentInvalid (400),
IdempotencyConflict (409), PaymentProviderUnavailable (503, Retry-After).
"""

from keelson.payment._factory import PaymentSettings, create_provider
from keelson.payment._provider import (
    PaymentProvider,
    ProviderCustomer,
    ProviderEvent,
    ProviderIntent,
    ProviderRefund,
    parse_stripe_event,
)
from keelson.payment._sandbox import (
    SANDBOX_PREFIX,
    SandboxProvider,
    create_sandbox_tables,
    drop_sandbox_tables,
)
from keelson.payment._stripe import StripeProvider, provider_error

__all__ = [
    "SANDBOX_PREFIX",
    "PaymentProvider",
    "PaymentSettings",
    "ProviderCustomer",
    "ProviderEvent",
    "ProviderIntent",
    "ProviderRefund",
    "SandboxProvider",
    "StripeProvider",
    "create_provider",
    "create_sandbox_tables",
    "drop_sandbox_tables",
    "parse_stripe_event",
    "provider_error",
]

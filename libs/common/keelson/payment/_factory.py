"""Settings of the payment core service and the choice of provider at start."""

from __future__ import annotations

import secrets

from pydantic import BaseModel, Field, SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from keelson.payment._provider import PaymentProvider
from keelson.payment._sandbox import SandboxProvider
from keelson.payment._stripe import StripeProvider

__all__ = ["PaymentSettings", "create_provider"]


def _random_secret() -> SecretStr:
    return SecretStr("whsec_" + secrets.token_hex(24))


class PaymentSettings(BaseModel):
    """`payment.*`: Stripe when `stripe_api_key` is set, the sandbox otherwise."""

    stripe_api_key: SecretStr | None = None
    stripe_webhook_secret: SecretStr | None = None
    # Only for an emulator or a proxy in front of Stripe; unset means api.stripe.com.
    stripe_api_base: str | None = None
    timeout_seconds: float = Field(10.0, gt=0, le=120)
    max_network_retries: int = Field(2, ge=0, le=10)
    webhook_tolerance_seconds: int = Field(300, ge=1, le=3600)
    # Random per process unless set: no one outside can forge a sandbox webhook, and a
    # test that signs its own events sets a secret it knows.
    sandbox_webhook_secret: SecretStr = Field(default_factory=_random_secret)

    @property
    def stripe_enabled(self) -> bool:
        return self.stripe_api_key is not None


def create_provider(settings: PaymentSettings, *, engine: AsyncEngine | None) -> PaymentProvider:
    """`StripeProvider` when an API key is set, else a `SandboxProvider` on `engine`.

    The sandbox should have an engine (a pool) of its own: a caller that holds a
    connection while it calls the provider would otherwise wait for itself when the
    shared pool runs dry.
    """
    if settings.stripe_api_key is not None:
        secret = settings.stripe_webhook_secret
        return StripeProvider(
            settings.stripe_api_key.get_secret_value(),
            webhook_secret=secret.get_secret_value() if secret else None,
            api_base=settings.stripe_api_base,
            timeout=settings.timeout_seconds,
            max_network_retries=settings.max_network_retries,
            webhook_tolerance=settings.webhook_tolerance_seconds,
        )
    if engine is None:
        raise ValueError("the sandbox provider needs a database engine")
    return SandboxProvider(
        engine,
        webhook_secret=settings.sandbox_webhook_secret.get_secret_value(),
        webhook_tolerance=settings.webhook_tolerance_seconds,
    )

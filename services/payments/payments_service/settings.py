"""Settings of the payments service."""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

from keelson.config import KeelsonSettings
from keelson.payment import PaymentSettings

__all__ = ["PaymentsSettings", "Settings"]

DEFAULT_CURRENCIES = ["usd", "eur", "gbp", "chf", "cad", "aud", "jpy", "sek", "nok", "dkk"]


class PaymentsSettings(BaseModel):
    """`payments.*`: what the API accepts and how reconciliation runs."""

    currencies: list[str] = DEFAULT_CURRENCIES
    max_amount: int = Field(99_999_999, ge=1, le=99_999_999)  # Stripe's own ceiling
    max_webhook_bytes: int = Field(512 * 1024, ge=1024)
    # Webhook events applied per transaction at most, when requests arrive together.
    webhook_batch_max: int = Field(64, ge=1, le=1000)
    reconcile_interval_seconds: float = Field(300.0, gt=0)
    reconcile_window_seconds: int = Field(3 * 24 * 3600, ge=60)
    reconcile_max_intents: int = Field(1000, ge=1, le=100_000)
    # How often `payments_intents{status}` is counted again from the database.
    intent_count_interval_seconds: float = Field(15.0, gt=0)

    @model_validator(mode="after")
    def _lower_currencies(self) -> Self:
        self.currencies = [c.lower() for c in self.currencies]
        if any(len(c) != 3 or not c.isalpha() for c in self.currencies):
            raise ValueError("currencies must be three-letter ISO 4217 codes")
        return self


class Settings(KeelsonSettings):
    service: str = "payments"
    port: int = 8004
    # KEELSON_STRIPE_API_KEY set: Stripe; unset: the in-database sandbox (test mode).
    stripe_api_key: SecretStr | None = None
    stripe_webhook_secret: SecretStr | None = None
    payment: PaymentSettings = PaymentSettings()
    payments: PaymentsSettings = PaymentsSettings()

    @field_validator("stripe_api_key", "stripe_webhook_secret", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # Compose writes `${KEELSON_STRIPE_API_KEY:-}`: empty means the sandbox.
        return None if value == "" else value

    @model_validator(mode="after")
    def _stripe_keys_into_payment(self) -> Self:
        updates = {}
        if self.stripe_api_key is not None:
            updates["stripe_api_key"] = self.stripe_api_key
        if self.stripe_webhook_secret is not None:
            updates["stripe_webhook_secret"] = self.stripe_webhook_secret
        if updates:
            self.payment = self.payment.model_copy(update=updates)
        if self.payment.stripe_enabled and self.payment.stripe_webhook_secret is None:
            raise ValueError("KEELSON_STRIPE_WEBHOOK_SECRET must be set with a Stripe API key")
        return self

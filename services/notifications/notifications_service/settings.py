"""Settings of the notifications service."""

from __future__ import annotations

import ipaddress
from enum import StrEnum

from pydantic import BaseModel, Field, SecretStr, field_validator

from keelson.config import KeelsonSettings

__all__ = [
    "DeliverySettings",
    "EmailSettings",
    "EventRoute",
    "NotificationsSettings",
    "Settings",
    "SlackSettings",
    "SmsSettings",
    "SmtpSecurity",
    "WebhookSettings",
]


class SmtpSecurity(StrEnum):
    NONE = "none"  # plain SMTP: local sinks only
    STARTTLS = "starttls"
    TLS = "tls"  # implicit TLS (port 465)


class EmailSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(1025, ge=1, le=65535)
    security: SmtpSecurity = SmtpSecurity.NONE
    username: str | None = None
    password: SecretStr | None = None
    # A CA bundle (PEM) to verify the server's certificate with, for a relay whose
    # certificate a private CA signed; unset: the system's trusted CAs.
    ca_file: str | None = None
    sender: str = "Keelson <no-reply@keelson.localhost>"
    timeout_seconds: float = Field(10.0, gt=0)
    connections: int = Field(8, ge=1, le=256, description="SMTP connections kept open")


class SmsSettings(BaseModel):
    """Twilio when `account_sid` and `auth_token` are set, else the sandbox that records."""

    account_sid: str | None = None
    auth_token: SecretStr | None = None
    sender: str = "+15005550006"
    # Where the Twilio SDK's requests go: Twilio itself, or a local peer in tests.
    api_base_url: str = "https://api.twilio.com"
    timeout_seconds: float = Field(10.0, gt=0)

    @property
    def twilio_enabled(self) -> bool:
        return bool(self.account_sid and self.auth_token)


class SlackSettings(BaseModel):
    timeout_seconds: float = Field(10.0, gt=0)
    # Incoming-webhook URLs must start with one of these (Slack's own host by default).
    allowed_url_prefixes: list[str] = ["https://hooks.slack.com/"]


class WebhookSettings(BaseModel):
    timeout_seconds: float = Field(10.0, gt=0)
    max_response_bytes: int = Field(64 * 1024, ge=0)
    # Networks a webhook may reach although private (tests, on-premises receivers).
    allow_networks: list[str] = []
    max_endpoints_per_user: int = Field(20, ge=1)

    @field_validator("allow_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for network in value:
            ipaddress.ip_network(network, strict=False)
        return value


class DeliverySettings(BaseModel):
    max_attempts: int = Field(6, ge=1, le=50)
    backoff_base_seconds: float = Field(2.0, gt=0)
    backoff_max_seconds: float = Field(3600.0, gt=0)
    # A claimed row whose sender died is claimed again after this long.
    lease_seconds: float = Field(60.0, gt=0)
    batch_size: int = Field(200, ge=1, le=5000)
    poll_interval_seconds: float = Field(1.0, gt=0)
    # After a wake-up, wait this long so that one claim takes several new rows.
    claim_delay_seconds: float = Field(0.005, ge=0, le=1)
    concurrency: dict[str, int] = {"email": 32, "sms": 8, "slack": 8, "webhook": 16}
    # Rows a channel holds claimed, as a multiple of its concurrency: the ones waiting
    # for a sender keep it busy while the claim for the ones after them runs.
    claim_ahead: int = Field(4, ge=2, le=16)
    worker: bool = True  # run the delivery worker in this process


class EventRoute(BaseModel):
    """What a bus event becomes: a template on a channel to the address in `recipient_field`."""

    template: str
    channel: str = "email"
    category: str = "account"
    transactional: bool = False
    recipient_field: str = "email"
    # A link built from the public base URL with the unsealed token: (path, token field).
    link_path: str | None = None


DEFAULT_EVENT_ROUTES: dict[str, EventRoute] = {
    "auth.user_registered": EventRoute(template="welcome"),
    "auth.email_verification_requested": EventRoute(
        template="verify_email", transactional=True, link_path="/verify-email"
    ),
    "auth.password_reset_requested": EventRoute(
        template="password_reset", transactional=True, link_path="/reset-password"
    ),
    # Sign-up answers alike whether or not the address is taken; its owner is told here.
    "auth.signup_for_existing_account": EventRoute(template="existing_account", transactional=True),
    "payments.payment_succeeded": EventRoute(template="payment_receipt", category="billing"),
    "payments.payment_failed": EventRoute(template="payment_failed", category="billing"),
    "payments.refund_succeeded": EventRoute(template="refund_receipt", category="billing"),
}


class NotificationsSettings(BaseModel):
    public_base_url: str = "http://127.0.0.1:8000"
    default_locale: str = "en"
    email: EmailSettings = EmailSettings()
    sms: SmsSettings = SmsSettings()
    slack: SlackSettings = SlackSettings()
    webhook: WebhookSettings = WebhookSettings()
    delivery: DeliverySettings = DeliverySettings()
    events: dict[str, EventRoute] = DEFAULT_EVENT_ROUTES
    consumer_group: str = "notifications"
    # Consumers of the group in this process: the bus hands each its events one after
    # another, so several of them keep several inserts in flight (Redis transport only).
    intake_consumers: int = Field(8, ge=1, le=32)

    @field_validator("public_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("public_base_url must be http:// or https://")
        return value.rstrip("/")


class Settings(KeelsonSettings):
    service: str = "notifications"
    port: int = 8003
    notifications: NotificationsSettings = NotificationsSettings()

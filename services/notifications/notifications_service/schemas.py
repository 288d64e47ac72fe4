"""What clients send and receive: request bodies and public views, apart from the tables."""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from notifications_service.models import Channel, Status

__all__ = [
    "AttemptPublic",
    "NotificationAccepted",
    "NotificationCreate",
    "NotificationDetail",
    "NotificationPage",
    "NotificationPublic",
    "PreferencesPublic",
    "PreferencesUpdate",
    "WebhookCreate",
    "WebhookCreated",
    "WebhookPublic",
]

MAX_DATA_BYTES = 16 * 1024
MAX_DATA_DEPTH = 5
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LINE_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _no_control(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("control characters are not allowed")
    return value


def _one_line(value: str) -> str:
    if _LINE_CONTROL.search(value):
        raise ValueError("control characters (line breaks included) are not allowed")
    return value


def _depth(value: Any, level: int = 0) -> int:
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


Line = Annotated[str, AfterValidator(_one_line)]
Text = Annotated[str, AfterValidator(_no_control)]
TemplateName = Annotated[str, Field(pattern=r"^[a-z0-9_]{1,64}$")]
Locale = Annotated[str, Field(pattern=r"^[a-z]{2}(-[A-Z]{2})?$")]
Category = Annotated[str, Field(pattern=r"^[a-z0-9_]{1,32}$")]


class NotificationCreate(BaseModel):
    """A template with `data`, or a `subject` and `body` sent as plain values."""

    model_config = ConfigDict(extra="forbid")

    channel: Channel
    to: Line = Field(min_length=1, max_length=512, description="address, phone, URL or endpoint id")
    template: TemplateName | None = None
    subject: Line | None = Field(None, max_length=200)
    body: Text | None = Field(None, max_length=20_000)
    data: dict[str, Any] = Field(default_factory=dict)
    locale: Locale | None = None
    category: Category = "general"
    idempotency_key: Line | None = Field(None, min_length=1, max_length=200)

    @field_validator("data")
    @classmethod
    def _bounded(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(value, separators=(",", ":"))) > MAX_DATA_BYTES:
            raise ValueError(f"data must be at most {MAX_DATA_BYTES} bytes of JSON")
        if _depth(value) > MAX_DATA_DEPTH:
            raise ValueError(f"data must nest at most {MAX_DATA_DEPTH} levels")
        return value

    @model_validator(mode="after")
    def _content(self) -> NotificationCreate:
        if self.template is None and self.body is None:
            raise ValueError("give a template, or a body (and a subject for email)")
        if self.template is not None and (self.subject is not None or self.body is not None):
            raise ValueError("give a template or subject+body, not both")
        if self.channel is Channel.EMAIL and self.template is None and not self.subject:
            raise ValueError("an email without a template needs a subject")
        return self


class NotificationAccepted(BaseModel):
    id: uuid.UUID
    status: Status


class AttemptPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    attempted_at: datetime
    outcome: str
    response_code: int | None
    error: str | None
    duration_ms: int


class NotificationPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    channel: Channel
    recipient: str
    template: str | None
    category: str
    transactional: bool
    status: Status
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None


class NotificationDetail(NotificationPublic):
    attempt_log: list[AttemptPublic]


class NotificationPage(BaseModel):
    items: list[NotificationPublic]
    next_cursor: str | None


class PreferencesUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    muted_channels: list[Channel] = Field(default_factory=list, max_length=4)
    muted_categories: list[Category] = Field(default_factory=list, max_length=50)
    locale: Locale | None = None


class PreferencesPublic(PreferencesUpdate):
    model_config = ConfigDict(extra="ignore", from_attributes=True)


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Line = Field(min_length=8, max_length=2048)
    description: Line | None = Field(None, max_length=200)


class WebhookPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    url: str
    description: str | None
    created_at: datetime


class WebhookCreated(WebhookPublic):
    secret: str = Field(description="shown once: verify deliveries with it (Standard Webhooks)")

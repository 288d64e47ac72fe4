"""The channel protocol, the message a channel sends and the error it raises."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["Channel", "DeliveryError", "OutgoingMessage", "classify_status", "parse_retry_after"]


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A rendered notification, ready for a channel."""

    id: str
    recipient: str
    subject: str
    text: str
    html: str | None = None
    transactional: bool = True
    idempotency_key: str | None = None
    unsubscribe_url: str | None = None
    event_type: str = "notification"
    payload: dict[str, Any] = field(default_factory=dict)
    secret: str | None = None  # a webhook endpoint's signing secret


class DeliveryError(Exception):
    """A send that did not succeed: `permanent` ones are never retried.

    `detail` is stored on the notification, so it must carry no secret.
    """

    def __init__(
        self,
        detail: str,
        *,
        permanent: bool,
        code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail[:500]
        self.permanent = permanent
        self.code = code
        self.retry_after = retry_after


class Channel(Protocol):
    name: str

    async def send(self, message: OutgoingMessage) -> int | None:
        """Deliver `message`; the provider's response code, or DeliveryError."""

    async def close(self) -> None: ...


def classify_status(status: int, detail: str, *, retry_after: float | None = None) -> DeliveryError:
    """An HTTP provider's error status as a delivery error: 429 and 5xx are worth a retry."""
    transient = status == 429 or status >= 500 or status == 408
    return DeliveryError(
        f"{status}: {detail}", permanent=not transient, code=status, retry_after=retry_after
    )


def parse_retry_after(value: str | None, *, ceiling: float = 3600.0) -> float | None:
    """Seconds from a `Retry-After` header given as delta-seconds (dates are ignored)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return min(max(seconds, 0.0), ceiling)

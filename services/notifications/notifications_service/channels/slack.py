"""Slack through incoming webhooks (slack-sdk); a 429's Retry-After sets the next attempt."""

from __future__ import annotations

import aiohttp
from slack_sdk.webhook.async_client import AsyncWebhookClient

from notifications_service.channels.base import (
    DeliveryError,
    OutgoingMessage,
    classify_status,
    parse_retry_after,
)
from notifications_service.settings import SlackSettings

__all__ = ["SlackWebhook"]


class SlackWebhook:
    """`recipient` is the incoming-webhook URL (one of the allowed prefixes)."""

    name = "slack"

    def __init__(self, settings: SlackSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None

    def allows(self, url: str) -> bool:
        return any(url.startswith(prefix) for prefix in self.settings.allowed_url_prefixes)

    async def send(self, message: OutgoingMessage) -> int | None:
        if not self.allows(message.recipient):
            raise DeliveryError("not an allowed Slack webhook URL", permanent=True)
        if self._session is None:
            self._session = aiohttp.ClientSession()
        # Retries are the delivery worker's, scheduled in the database: none in the SDK.
        client = AsyncWebhookClient(
            message.recipient,
            timeout=int(self.settings.timeout_seconds),
            session=self._session,
            retry_handlers=[],
        )
        text = f"*{message.subject}*\n{message.text}" if message.subject else message.text
        try:
            response = await client.send(text=text)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DeliveryError(
                f"Slack unreachable: {type(exc).__name__}", permanent=False
            ) from None
        if response.status_code == 200:
            return 200
        retry_after = parse_retry_after(_header(response.headers, "Retry-After"))
        raise classify_status(response.status_code, response.body[:200], retry_after=retry_after)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _header(headers: dict[str, object], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return str(value[0] if isinstance(value, list) and value else value)
    return None

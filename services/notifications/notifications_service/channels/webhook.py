"""Webhooks signed per Standard Webhooks, sent to the address the SSRF guard checked."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
from standardwebhooks import Webhook

from notifications_service.channels.base import (
    DeliveryError,
    OutgoingMessage,
    classify_status,
    parse_retry_after,
)
from notifications_service.settings import WebhookSettings
from notifications_service.ssrf import BlockedTarget, resolve_target

__all__ = ["SignedWebhook", "signed_headers"]


def signed_headers(secret: str, *, message_id: str, body: str) -> dict[str, str]:
    """`webhook-id`, `webhook-timestamp`, `webhook-signature` for `body` (a JSON string)."""
    now = datetime.now(UTC)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, now, body),
        "content-type": "application/json",
    }


class SignedWebhook:
    name = "webhook"

    def __init__(self, settings: WebhookSettings) -> None:
        self.settings = settings
        # No redirects: a 3xx to an inner address would step around the guard.
        self.http = httpx.AsyncClient(
            timeout=settings.timeout_seconds, follow_redirects=False, trust_env=False
        )

    async def send(self, message: OutgoingMessage) -> int | None:
        if not message.secret:
            raise DeliveryError("the webhook endpoint no longer exists", permanent=True)
        try:
            target = await resolve_target(
                message.recipient, allow_networks=self.settings.allow_networks
            )
        except BlockedTarget as exc:
            raise DeliveryError(str(exc), permanent=True) from None
        body = json.dumps(
            {"type": message.event_type, "id": message.id, "data": message.payload},
            separators=(",", ":"),
        )
        headers = {
            **signed_headers(message.secret, message_id=message.id, body=body),
            "host": target.host,
        }
        host = target.host.rsplit(":", 1)[0] if not target.host.endswith("]") else target.host
        try:
            async with self.http.stream(
                "POST",
                target.url,
                content=body,
                headers=headers,
                extensions={"sni_hostname": host.strip("[]")},
            ) as response:
                await _read_capped(response, self.settings.max_response_bytes)
        except httpx.HTTPError as exc:
            raise DeliveryError(
                f"webhook unreachable: {type(exc).__name__}", permanent=False
            ) from None
        if 200 <= response.status_code < 300:
            return response.status_code
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        raise classify_status(
            response.status_code, "webhook receiver refused", retry_after=retry_after
        )

    async def close(self) -> None:
        await self.http.aclose()


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    """At most `limit` bytes of the body; the rest is not read (the connection is dropped)."""
    kept = bytearray()
    async for chunk in response.aiter_raw():
        kept += chunk[: limit - len(kept)]
        if len(kept) >= limit:
            break
    return bytes(kept)

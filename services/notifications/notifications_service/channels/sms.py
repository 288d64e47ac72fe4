"""SMS: Twilio's Messages API through the official SDK, or a sandbox that records messages."""

from __future__ import annotations

import collections
import logging
from typing import Any

import httpx
from twilio.base.exceptions import TwilioRestException
from twilio.http import AsyncHttpClient
from twilio.http.response import Response as TwilioResponse
from twilio.rest import Client

from notifications_service.channels.base import DeliveryError, OutgoingMessage, classify_status
from notifications_service.settings import SmsSettings

__all__ = ["SandboxSms", "TwilioSms", "sms_channel"]

_log = logging.getLogger("notifications_service.sms")
_TWILIO_API = "https://api.twilio.com"


class _HttpxTransport(AsyncHttpClient):  # type: ignore[misc]
    """The SDK's documented custom-client seam, on httpx, sending to `base_url`.

    Twilio takes an idempotency token per request (`I-Twilio-Idempotency-Token`), so a
    retried send is not a second message.
    """

    def __init__(self, client: httpx.AsyncClient, base_url: str, headers: dict[str, str]) -> None:
        super().__init__(_log, True, None)
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.extra_headers = headers

    async def request(
        self,
        method: str,
        uri: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> TwilioResponse:
        if uri.startswith(_TWILIO_API):
            uri = self.base_url + uri[len(_TWILIO_API) :]
        response = await self.client.request(
            method,
            uri,
            params=params,  # type: ignore[arg-type]
            data=data,
            headers={**(headers or {}), **self.extra_headers},
            auth=auth,
            follow_redirects=allow_redirects,
        )
        return TwilioResponse(response.status_code, response.text, dict(response.headers))


class TwilioSms:
    name = "sms"

    def __init__(self, settings: SmsSettings) -> None:
        assert settings.account_sid and settings.auth_token
        self.settings = settings
        self.account_sid = settings.account_sid
        self.auth_token = settings.auth_token.get_secret_value()
        self.http = httpx.AsyncClient(timeout=settings.timeout_seconds)

    async def send(self, message: OutgoingMessage) -> int | None:
        headers = {}
        if message.idempotency_key:
            headers["I-Twilio-Idempotency-Token"] = message.idempotency_key
        transport = _HttpxTransport(self.http, self.settings.api_base_url, headers)
        client = Client(self.account_sid, self.auth_token, http_client=transport)
        try:
            await client.messages.create_async(
                to=message.recipient, from_=self.settings.sender, body=message.text
            )
        except TwilioRestException as exc:
            raise classify_status(exc.status, f"Twilio error {exc.code}: {exc.msg}") from None
        except httpx.HTTPError as exc:
            raise DeliveryError(
                f"Twilio unreachable: {type(exc).__name__}", permanent=False
            ) from None
        return 201

    async def close(self) -> None:
        await self.http.aclose()


class SandboxSms:
    """No Twilio credentials: messages are kept (the latest 1000) and logged, not sent."""

    name = "sms"

    def __init__(self) -> None:
        self.sent: collections.deque[dict[str, Any]] = collections.deque(maxlen=1000)

    async def send(self, message: OutgoingMessage) -> int | None:
        self.sent.append({"id": message.id, "to": message.recipient, "body": message.text})
        _log.info("sandbox SMS %s recorded, not sent", message.id)
        return 200

    async def close(self) -> None:
        return None


def sms_channel(settings: SmsSettings) -> TwilioSms | SandboxSms:
    return TwilioSms(settings) if settings.twilio_enabled else SandboxSms()

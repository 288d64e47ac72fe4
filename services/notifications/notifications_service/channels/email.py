"""Email over SMTP (aiosmtplib): a few kept connections, STARTTLS or implicit TLS, auth."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr

import aiosmtplib

from notifications_service.channels.base import DeliveryError, OutgoingMessage
from notifications_service.settings import EmailSettings, SmtpSecurity

__all__ = ["SmtpEmail", "build_email"]


def build_email(message: OutgoingMessage, *, sender: str) -> EmailMessage:
    """Multipart text + HTML, with a Message-ID naming the notification (stable on retries)."""
    email = EmailMessage()
    email["From"] = sender
    email["To"] = message.recipient
    email["Subject"] = message.subject
    email["Date"] = format_datetime(datetime.now(UTC))
    domain = parseaddr(sender)[1].rpartition("@")[2] or "keelson.localhost"
    email["Message-ID"] = f"<{message.id}@{domain}>" if message.id else make_msgid(domain=domain)
    if not message.transactional and message.unsubscribe_url:
        email["List-Unsubscribe"] = f"<{message.unsubscribe_url}>"
    email.set_content(message.text)
    if message.html is not None:
        email.add_alternative(message.html, subtype="html")
    return email


class SmtpEmail:
    """Sends through up to `connections` SMTP sessions, each reused for many messages."""

    name = "email"

    def __init__(self, settings: EmailSettings) -> None:
        self.settings = settings
        self._idle: asyncio.LifoQueue[aiosmtplib.SMTP] = asyncio.LifoQueue()
        for _ in range(settings.connections):
            self._idle.put_nowait(self._client())

    def _client(self) -> aiosmtplib.SMTP:
        s = self.settings
        return aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            username=s.username,
            password=s.password.get_secret_value() if s.password else None,
            timeout=s.timeout_seconds,
            use_tls=s.security is SmtpSecurity.TLS,
            start_tls=s.security is SmtpSecurity.STARTTLS,
        )

    async def send(self, message: OutgoingMessage) -> int | None:
        email = build_email(message, sender=self.settings.sender)
        client = await self._idle.get()
        healthy = False
        try:
            if not client.is_connected:
                await client.connect()
            await client.send_message(email)
            healthy = True
            return 250
        except aiosmtplib.SMTPRecipientsRefused as exc:
            healthy = True
            first = exc.recipients[0] if exc.recipients else None
            code = first.code if first else 550
            raise DeliveryError(
                f"recipient refused ({code})", permanent=code >= 500, code=code
            ) from None
        except aiosmtplib.SMTPResponseException as exc:
            healthy = exc.code < 500 and not isinstance(exc, aiosmtplib.SMTPServerDisconnected)
            raise DeliveryError(
                f"SMTP {exc.code}: {exc.message[:200]}", permanent=exc.code >= 500, code=exc.code
            ) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise DeliveryError(
                f"SMTP unavailable: {type(exc).__name__}", permanent=False
            ) from None
        finally:
            if not healthy:
                with contextlib.suppress(Exception):
                    client.close()
                client = self._client()
            self._idle.put_nowait(client)

    async def close(self) -> None:
        while not self._idle.empty():
            client = self._idle.get_nowait()
            if client.is_connected:
                with contextlib.suppress(Exception):
                    await client.quit()

"""Email over SMTP (aiosmtplib): a few kept connections, STARTTLS or implicit TLS, auth."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import quopri
import uuid
from datetime import UTC, datetime
from email.header import Header
from email.utils import format_datetime, make_msgid, parseaddr

import aiosmtplib

from notifications_service.channels.base import DeliveryError, OutgoingMessage
from notifications_service.settings import EmailSettings, SmtpSecurity

__all__ = ["SmtpEmail", "build_email"]

_CRLF = b"\r\n"


def build_email(message: OutgoingMessage, *, sender: str) -> bytes:
    """The RFC 5322 bytes: text (and HTML) in quoted-printable UTF-8, a Message-ID naming
    the notification (the same on every retry, so a receiver can tell a repeat).

    Written directly rather than through `email.message`, whose header folding costs
    more CPU than the rest of a send; the header values are safe as they are (addresses
    validated, subjects collapsed to one line).
    """
    domain = _sender_domain(sender)
    subject = message.subject
    if not subject.isascii():
        subject = Header(subject, "utf-8").encode().replace("\n", "\r\n")
    headers = [
        f"From: {sender}",
        f"To: {message.recipient}",
        f"Subject: {subject}",
        f"Date: {format_datetime(datetime.now(UTC))}",
        f"Message-ID: <{message.id}@{domain}>" if message.id else f"Message-ID: {make_msgid()}",
        "MIME-Version: 1.0",
    ]
    if not message.transactional and message.unsubscribe_url:
        headers.append(f"List-Unsubscribe: <{message.unsubscribe_url}>")
    text = _part("plain", message.text)
    if message.html is None:
        return _CRLF.join(h.encode() for h in headers) + _CRLF + text
    boundary = f"=_keelson_{uuid.uuid4().hex}"  # "=_" never occurs in quoted-printable
    headers.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
    delimiter = f"--{boundary}".encode()
    return _CRLF.join(
        [
            *(h.encode() for h in headers),
            b"",
            delimiter,
            text,
            delimiter,
            _part("html", message.html),
            delimiter + b"--",
            b"",
        ]
    )


@functools.lru_cache(maxsize=16)
def _sender_domain(sender: str) -> str:
    return parseaddr(sender)[1].rpartition("@")[2] or "keelson.localhost"


def _part(subtype: str, content: str) -> bytes:
    body = quopri.encodestring(content.replace("\r\n", "\n").encode("utf-8"))
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    ).encode() + body.replace(b"\n", _CRLF)


class SmtpEmail:
    """Sends through up to `connections` SMTP sessions, each reused for many messages."""

    name = "email"

    def __init__(self, settings: EmailSettings) -> None:
        self.settings = settings
        self._envelope_sender = parseaddr(settings.sender)[1]
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
            cert_bundle=s.ca_file,
        )

    async def send(self, message: OutgoingMessage) -> int | None:
        email = build_email(message, sender=self.settings.sender)
        client = await self._idle.get()
        healthy = False
        try:
            if not client.is_connected:
                await client.connect()
            await client.sendmail(self._envelope_sender, [message.recipient], email)
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

"""A real SMTP server (aiosmtpd) for tests: keeps what it accepts, answers as told."""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
import uuid
from collections import deque
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from keelson.auth import Principal, identity_key, sign_identity, verify_identity_headers
from keelson.keys import KeyManager
from keelson_dev.embedded import free_port
from notifications_service.settings import Settings
from notifications_service.store import NewNotification, enqueue

USER_SCOPES = frozenset({"profile:read", "notifications:send"})


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage

    @property
    def message_id(self) -> str:
        return str(self.message["Message-ID"])

    def text(self) -> str:
        part = self.message.get_body(preferencelist=("plain",))
        assert part is not None
        return str(part.get_content())

    def html(self) -> str | None:
        part = self.message.get_body(preferencelist=("html",))
        return None if part is None else str(part.get_content())


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.sink.delay:
            await asyncio.sleep(self.sink.delay)  # a slow server, not a synchronisation
        with self.sink.lock:
            for recipient in envelope.rcpt_tos:
                queued = self.sink.replies.get(recipient)
                if queued:
                    return queued.popleft()
                if recipient in self.sink.always:
                    return self.sink.always[recipient]
            parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
            assert isinstance(parsed, EmailMessage)
            self.sink.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), parsed))
        return "250 OK"


class SmtpSink:
    """`replies[address]` answer the next DATA commands for that recipient instead of
    accepting, `always[address]` answers all of them (other tests' mail is unaffected)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[Received] = []
        self.replies: dict[str, deque[str]] = {}
        self.always: dict[str, str] = {}
        self.delay = 0.0
        self.lock = threading.Lock()
        self.controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port)

    def start(self) -> SmtpSink:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def to(self, address: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if address in r.rcpt_tos]


def caller(
    user_id: str | None = None,
    *,
    roles: tuple[str, ...] = ("user",),
    scopes: frozenset[str] = USER_SCOPES,
) -> dict[str, str]:
    """Headers the gateway would forward for this user, signed with the shared identity key."""
    principal = Principal(
        user_id=user_id or str(uuid.uuid4()), roles=frozenset(roles), scopes=scopes
    )
    return sign_identity(
        principal, identity_key(KeyManager(Settings().master_key.get_secret_value()))
    )


def user_of(headers: dict[str, str]) -> str:
    """The user id a `caller()` header names."""
    key = identity_key(KeyManager(Settings().master_key.get_secret_value()))
    principal = verify_identity_headers(headers, key)
    assert principal is not None
    return principal.user_id


def admin() -> dict[str, str]:
    return caller(roles=("user", "admin"))


def new_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"


Answer = tuple[int, dict[str, str], bytes]


async def settled(client: Any, notification_id: str, headers: dict[str, str]) -> Any:
    """The notification once it is no longer waiting to be sent (bounded poll)."""
    from keelson_dev.testing import eventually

    async def done() -> Any:
        response = await client.get(f"/api/v1/notifications/{notification_id}", headers=headers)
        body = response.json()
        return body if body["status"] not in ("pending", "sending") else None

    return await eventually(done, timeout=20)


class Recorder:
    """What a local HTTP peer received, and the answers it gives next (then 200)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.answers: deque[Answer] = deque()

    def next_answer(
        self, default: tuple[int, dict[str, str], bytes]
    ) -> tuple[int, dict[str, str], bytes]:
        return self.answers.popleft() if self.answers else default


def recording_app(recorder: Recorder, default: Answer) -> Any:
    """A raw ASGI app that records each request and answers from `recorder`."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        recorder.requests.append((scope["path"], headers, body))
        status, extra, payload = recorder.next_answer(default)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in extra.items()],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    return app


async def queue_emails(engine: AsyncEngine, *, requested_by: str, prefix: str, count: int) -> None:
    """`count` plain emails queued and committed, to `<prefix>-<n>@example.com`, subject
    `message <n>`: the backlog a test then lets a real service process send."""
    async with AsyncSession(engine) as db:
        for n in range(count):
            await enqueue(
                db,
                NewNotification(
                    requested_by=requested_by,
                    channel="email",
                    recipient=f"{prefix}-{n}@example.com",
                    subject=f"message {n}",
                    body="body",
                ),
            )
        await db.commit()

"""The SMTP sink `keelson up` runs: each message received is stored as an `.eml` file.

`python -m keelson_dev.mailsink --dir .keelson/mail --port 58025` accepts any mail on the
port (local development only: no relay, no auth) and writes it, headers and body as
received, to `<dir>/<time>-<id>.eml`, which any mail client opens. `read_mailbox` reads
them back, newest first, for `keelson mail`.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

__all__ = ["MailboxEntry", "MaildirHandler", "main", "read_mailbox", "store_message"]

_LINK = re.compile(r"https?://[^\s<>\"')]+")


def store_message(directory: Path, content: bytes, *, recipients: Sequence[str]) -> Path:
    """Write one message atomically (a reader never sees half a file)."""
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.eml"
    header = "".join(f"X-Keelson-Rcpt-To: {r}\r\n" for r in recipients).encode()
    temporary = directory / f".{name}.tmp"
    temporary.write_bytes(header + content)
    os.replace(temporary, directory / name)
    return directory / name


class MaildirHandler:
    """aiosmtpd handler: every DATA is stored, then 250."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = envelope.original_content or envelope.content
        if isinstance(content, str):
            content = content.encode()
        store_message(self.directory, content, recipients=list(envelope.rcpt_tos))
        return "250 Message accepted for delivery"


@dataclass(frozen=True)
class MailboxEntry:
    path: Path
    received_at: datetime
    to: str
    subject: str
    links: list[str]


def read_mailbox(directory: Path, *, limit: int = 20) -> list[MailboxEntry]:
    """The latest `limit` messages, newest first."""
    if not directory.is_dir():
        return []
    files = sorted(directory.glob("*.eml"), key=lambda p: p.name, reverse=True)[:limit]
    return [_entry(path) for path in files]


def _entry(path: Path) -> MailboxEntry:
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    stamp = int(path.name.split("-", 1)[0]) / 1e9
    body = message.get_body(preferencelist=("plain", "html"))
    text = str(body.get_content()) if body is not None else ""
    to = message.get_all("X-Keelson-Rcpt-To") or [str(message.get("To", ""))]
    return MailboxEntry(
        path=path,
        received_at=datetime.fromtimestamp(stamp, UTC),
        to=", ".join(str(r) for r in to),
        subject=str(message.get("Subject", "")),
        links=list(dict.fromkeys(_LINK.findall(text))),
    )


def main(argv: Sequence[str] | None = None) -> int:
    from aiosmtpd.controller import Controller

    parser = argparse.ArgumentParser(prog="python -m keelson_dev.mailsink")
    parser.add_argument("--dir", type=Path, required=True, help="where .eml files go")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=58025)
    args = parser.parse_args(argv)
    controller = Controller(MaildirHandler(args.dir), hostname=args.host, port=args.port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    controller.start()
    print(f"SMTP sink on {args.host}:{args.port}, storing mail in {args.dir}", flush=True)
    try:
        stop.wait()
    finally:
        controller.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

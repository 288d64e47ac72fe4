"""The SMTP sink of `keelson up` stores .eml files; `keelson mail` lists them with their links."""

from __future__ import annotations

import smtplib
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

import pytest

from keelson_dev.cli import main
from keelson_dev.embedded import free_port
from keelson_dev.mailsink import read_mailbox
from keelson_dev.suite import Layout
from keelson_dev.testing import eventually


def _message(to: str, subject: str, body: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Keelson <no-reply@keelson.localhost>"
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    message.add_alternative(f"<p>{body}</p>", subtype="html")
    return message


async def test_the_sink_stores_each_message_and_keelson_mail_lists_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    mail_dir = tmp_path / "state" / "mail"
    sink = subprocess.Popen(
        [sys.executable, "-m", "keelson_dev.mailsink", "--dir", str(mail_dir), "--port", str(port)],
        stdout=subprocess.PIPE,
    )
    try:
        assert sink.stdout is not None
        assert b"SMTP sink on" in sink.stdout.readline()  # it listens once it says so
        link = "http://127.0.0.1:8000/reset-password?token=abc123"
        with smtplib.SMTP("127.0.0.1", port) as smtp:
            smtp.send_message(_message("ada@example.com", "Welcome", "Hello Ada"))
            smtp.send_message(_message("bob@example.com", "Reset", f"Open {link} soon."))
    finally:
        sink.terminate()
        assert sink.wait(10) == 0

    files = sorted(mail_dir.glob("*.eml"))
    assert len(files) == 2
    assert not list(mail_dir.glob(".*.tmp"))
    entries = await eventually(lambda: read_mailbox(mail_dir))
    assert [(e.to, e.subject) for e in entries] == [
        ("bob@example.com", "Reset"),
        ("ada@example.com", "Welcome"),
    ]
    assert entries[0].links == [link]

    assert main(["mail", "--state-dir", str(tmp_path / "state"), "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert "to bob@example.com" in out and "subject: Reset" in out
    assert f"link:    {link}" in out
    assert "Welcome" not in out


def test_keelson_mail_with_nothing_received(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["mail", "--state-dir", str(tmp_path)]) == 0
    assert "no mail in" in capsys.readouterr().out


def test_up_runs_the_sink_and_points_notifications_at_it(tmp_path: Path) -> None:
    layout = Layout(root=tmp_path, state_dir=tmp_path / ".keelson", smtp_port=25025)
    [mail] = [p for p in layout.programs() if p.name == "mail"]
    assert "keelson_dev.mailsink" in mail.command
    assert str(tmp_path / ".keelson" / "mail") in mail.command
    env = layout.service_environment()
    assert env["KEELSON_NOTIFICATIONS__EMAIL__PORT"] == "25025"
    assert env["KEELSON_NOTIFICATIONS__PUBLIC_BASE_URL"] == "http://127.0.0.1:8000"
    assert layout.ports()["smtp sink"] == 25025

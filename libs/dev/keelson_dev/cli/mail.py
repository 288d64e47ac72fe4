"""`keelson mail`: the latest messages the SMTP sink of `keelson up` received."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from keelson_dev.mailsink import read_mailbox

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    mail = subparsers.add_parser(
        "mail", help="the latest mail `keelson up` caught (to, subject, time, links)"
    )
    mail.add_argument(
        "--state-dir",
        type=Path,
        default=os.environ.get("KEELSON_UP_STATE_DIR", ".keelson"),
        help="the state folder of `keelson up` (KEELSON_UP_STATE_DIR, .keelson)",
    )
    mail.add_argument("-n", "--limit", type=int, default=10, help="how many (10)")
    mail.set_defaults(func=_cmd_mail)


def _cmd_mail(args: argparse.Namespace) -> int:
    folder = Path(args.state_dir) / "mail"
    entries = read_mailbox(folder, limit=max(args.limit, 1))
    if not entries:
        print(f"no mail in {folder}")
        return 0
    for entry in entries:
        when = entry.received_at.astimezone().strftime("%Y-%m-%d %H:%M:%S")
        print(f"{when}  to {entry.to}")
        print(f"  subject: {entry.subject}")
        for link in entry.links:
            print(f"  link:    {link}")
        print(f"  file:    {entry.path}")
    return 0

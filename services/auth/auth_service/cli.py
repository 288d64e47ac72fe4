"""`python -m auth_service admin ...`: the auth service's operator commands.

    python -m auth_service admin create-admin EMAIL
    python -m auth_service admin rotate-keys | list-keys | reencrypt

They run wherever the service runs (its image, a Kubernetes Job, a laptop), with the
service's own settings (`KEELSON_DATABASE_URL`, `KEELSON_MASTER_KEY`, ...). The dev kit's
`keelson create-admin` and `keelson auth ...` call them as a subprocess.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from collections.abc import Callable, Sequence

from auth_service import commands
from auth_service.settings import Settings
from keelson.config import ConfigError, load_settings
from keelson.errors import KeelsonError
from keelson.keys import DecryptionError

__all__ = ["PASSWORD_ENV", "build_parser", "main"]

PASSWORD_ENV = "KEELSON_ADMIN_PASSWORD"  # noqa: S105 (a variable name)
_PROG = "python -m auth_service admin"


def build_parser(prog: str = _PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Operate the auth service.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    create = subparsers.add_parser(
        "create-admin",
        help="give EMAIL the admin role, creating the account if needed",
        description=(
            f"The password comes from ${PASSWORD_ENV}, else a prompt (or one line of "
            "standard input when it is not a terminal). An existing account keeps its password."
        ),
    )
    create.add_argument("email")
    create.set_defaults(func=_create_admin)
    subparsers.add_parser(
        "rotate-keys", help="add a new signing key; older keys keep verifying until retired"
    ).set_defaults(func=_rotate_keys)
    subparsers.add_parser("list-keys", help="show the signing keys and their state").set_defaults(
        func=_list_keys
    )
    subparsers.add_parser(
        "reencrypt",
        help="after a master-key rotation, seal again under KEELSON_MASTER_KEY what "
        "KEELSON_PREVIOUS_MASTER_KEYS sealed",
    ).set_defaults(func=_reencrypt)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.func
    try:
        return command(args)
    except (ConfigError, KeelsonError, DecryptionError) as exc:
        hint = (
            "; is the old key in KEELSON_PREVIOUS_MASTER_KEYS?"
            if isinstance(exc, DecryptionError)
            else ""
        )
        detail = exc.detail if isinstance(exc, KeelsonError) else str(exc)
        print(f"{_PROG} {args.command}: {detail}{hint}", file=sys.stderr)
        return 1


def _settings() -> Settings:
    settings = load_settings(Settings)
    if settings.database_url is None:
        raise ConfigError("KEELSON_DATABASE_URL is not set")
    return settings


def _create_admin(args: argparse.Namespace) -> int:
    settings = _settings()
    password = _read_password()
    created = asyncio.run(commands.create_admin(settings, email=args.email, password=password))
    print(f"{'created' if created else 'promoted'} admin {args.email}")
    return 0


def _rotate_keys(args: argparse.Namespace) -> int:
    settings = _settings()
    kid, retired = asyncio.run(commands.rotate_keys(settings))
    print(f"new signing key {kid}")
    auth = settings.auth
    print(
        f"published within {auth.key_reload_seconds:g} s,"
        f" signs after {auth.key_activation_seconds:g} s"
    )
    for old in retired:
        print(f"retired {old}")
    return 0


def _list_keys(args: argparse.Namespace) -> int:
    for key in asyncio.run(commands.list_keys(_settings())):
        print(f"{key.kid}  {key.created_at.isoformat(timespec='seconds')}  {key.state}")
    return 0


def _reencrypt(args: argparse.Namespace) -> int:
    resealed = asyncio.run(commands.reencrypt(_settings()))
    print(f"resealed {len(resealed.signing_keys)} signing keys", end="")
    print(f" and {resealed.refresh_successors} kept refresh successors under the current key")
    return 0


def _read_password() -> str | None:
    """The new admin's password, or None to leave an existing account's password alone."""
    from_env = os.environ.get(PASSWORD_ENV)
    if from_env:
        return from_env
    if not sys.stdin.isatty():
        line = sys.stdin.readline().rstrip("\n")
        return line or None
    first = getpass.getpass("Password for the admin account (empty to keep an existing one): ")
    if not first:
        return None
    if getpass.getpass("Repeat the password: ") != first:
        raise ConfigError("the passwords differ")
    return first

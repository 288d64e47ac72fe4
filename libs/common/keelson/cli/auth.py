"""`keelson create-admin EMAIL` and `keelson auth rotate-keys | list-keys | reencrypt`."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from keelson.config import ConfigError, load_settings
from keelson.errors import KeelsonError

__all__ = ["register"]

_PASSWORD_ENV = "KEELSON_ADMIN_PASSWORD"  # noqa: S105 (a variable name)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    create = subparsers.add_parser(
        "create-admin",
        help="give EMAIL the admin role, creating the account if needed",
        description=(
            f"The password comes from ${_PASSWORD_ENV}, else a prompt (or one line of "
            "standard input when it is not a terminal). An existing account keeps its password."
        ),
    )
    create.add_argument("email")
    create.set_defaults(func=_create_admin)

    auth = subparsers.add_parser("auth", help="operate the auth service")
    commands = auth.add_subparsers(dest="auth_command", required=True)
    rotate = commands.add_parser(
        "rotate-keys", help="add a new signing key; older keys keep verifying until retired"
    )
    rotate.set_defaults(func=_rotate_keys)
    listing = commands.add_parser("list-keys", help="show the signing keys and their state")
    listing.set_defaults(func=_list_keys)
    reencrypt = commands.add_parser(
        "reencrypt",
        help="after a master-key rotation, seal again under KEELSON_MASTER_KEY what "
        "KEELSON_PREVIOUS_MASTER_KEYS sealed",
    )
    reencrypt.set_defaults(func=_reencrypt)


def _commands() -> tuple[Any, Any]:
    """The auth service's command module and its settings, imported only when used."""
    from auth_service import commands
    from auth_service.settings import Settings

    settings = load_settings(Settings)
    if settings.database_url is None:
        raise ConfigError("KEELSON_DATABASE_URL is not set")
    key_file = Path(".keelson") / "master.key"
    if settings.uses_development_master_key and key_file.exists():
        # The key `keelson up` made for the services it runs from this folder.
        key = SecretStr(key_file.read_text().strip())
        settings = settings.model_copy(update={"master_key": key})
    return commands, settings


def _create_admin(args: argparse.Namespace) -> int:
    try:
        commands, settings = _commands()
        password = _read_password()
        created = asyncio.run(commands.create_admin(settings, email=args.email, password=password))
    except (ConfigError, KeelsonError) as exc:
        print(f"keelson create-admin: {_message(exc)}", file=sys.stderr)
        return 1
    print(f"{'created' if created else 'promoted'} admin {args.email}")
    return 0


def _rotate_keys(args: argparse.Namespace) -> int:
    try:
        commands, settings = _commands()
    except ConfigError as exc:
        print(f"keelson auth rotate-keys: {exc}", file=sys.stderr)
        return 1
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
    try:
        commands, settings = _commands()
    except ConfigError as exc:
        print(f"keelson auth list-keys: {exc}", file=sys.stderr)
        return 1
    for key in asyncio.run(commands.list_keys(settings)):
        print(f"{key.kid}  {key.created_at.isoformat(timespec='seconds')}  {key.state}")
    return 0


def _reencrypt(args: argparse.Namespace) -> int:
    from keelson.keys import DecryptionError

    try:
        commands, settings = _commands()
        resealed = asyncio.run(commands.reencrypt(settings))
    except (ConfigError, DecryptionError) as exc:
        hint = "; is the old key in KEELSON_PREVIOUS_MASTER_KEYS?"
        extra = hint if isinstance(exc, DecryptionError) else ""
        print(f"keelson auth reencrypt: {exc}{extra}", file=sys.stderr)
        return 1
    print(f"resealed {len(resealed.signing_keys)} signing keys", end="")
    print(f" and {resealed.refresh_successors} kept refresh successors under the current key")
    return 0


def _read_password() -> str | None:
    """The new admin's password, or None to leave an existing account's password alone."""
    from_env = os.environ.get(_PASSWORD_ENV)
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


def _message(exc: Exception) -> str:
    return exc.detail if isinstance(exc, KeelsonError) else str(exc)

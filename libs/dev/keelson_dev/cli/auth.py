"""`keelson create-admin EMAIL` and `keelson auth rotate-keys | list-keys | reencrypt`.

Each runs the auth service's own command, `python -m auth_service admin ...`, as a
subprocess: the dev kit imports no service. Run from the folder `keelson up` ran in, the
command uses the suite's own master key (`.keelson/master.key`) when none is configured, as
the services `keelson up` started do.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from keelson.config import ConfigError, KeelsonSettings, load_settings

__all__ = ["admin_command", "admin_environment", "register"]

_AUTH_PACKAGE = "auth_service"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    create = subparsers.add_parser(
        "create-admin",
        help="give EMAIL the admin role, creating the account if needed",
        description=(
            "Runs `python -m auth_service admin create-admin EMAIL`. The password comes from "
            "$KEELSON_ADMIN_PASSWORD, else a prompt (or one line of standard input when it is "
            "not a terminal). An existing account keeps its password."
        ),
    )
    create.add_argument("email")
    create.set_defaults(func=lambda args: _delegate(["create-admin", args.email]))

    auth = subparsers.add_parser(
        "auth", help="operate the auth service (python -m auth_service admin ...)"
    )
    commands = auth.add_subparsers(dest="auth_command", required=True)
    for name, text in (
        ("rotate-keys", "add a new signing key; older keys keep verifying until retired"),
        ("list-keys", "show the signing keys and their state"),
        (
            "reencrypt",
            "after a master-key rotation, seal again under KEELSON_MASTER_KEY what "
            "KEELSON_PREVIOUS_MASTER_KEYS sealed",
        ),
    ):
        commands.add_parser(name, help=text).set_defaults(
            func=lambda args, name=name: _delegate([name])
        )


def admin_command(arguments: list[str]) -> list[str]:
    """The auth service's operator command line for `arguments`."""
    return [sys.executable, "-m", _AUTH_PACKAGE, "admin", *arguments]


def admin_environment(
    environ: Mapping[str, str], state_dir: Path = Path(".keelson")
) -> dict[str, str]:
    """`environ`, plus the master key `keelson up` made in `state_dir` when the settings
    name none (the services `keelson up` ran sealed their keys with it)."""
    env = dict(environ)
    key_file = state_dir / "master.key"
    if key_file.exists() and load_settings(KeelsonSettings).uses_development_master_key:
        env["KEELSON_MASTER_KEY"] = key_file.read_text().strip()
    return env


def _delegate(arguments: list[str]) -> int:
    if importlib.util.find_spec(_AUTH_PACKAGE) is None:
        print(f"keelson: the auth service ({_AUTH_PACKAGE}) is not installed", file=sys.stderr)
        return 1
    try:
        env = admin_environment(os.environ)
    except ConfigError as exc:
        print(f"keelson: {exc}", file=sys.stderr)
        return 1
    return subprocess.run(admin_command(arguments), env=env, check=False).returncode

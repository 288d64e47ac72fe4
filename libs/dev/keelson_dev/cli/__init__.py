"""The `keelson` command: each subcommand group lives in its own module with a `register`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main"]

# Each module defines `register(subparsers)`, adding parsers whose default `func`
# takes the parsed args and returns an exit code.
_COMMAND_MODULES: tuple[str, ...] = (
    "keelson_dev.cli.up",
    "keelson_dev.cli.auth",
    "keelson_dev.cli.logs",
    "keelson_dev.cli.mail",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keelson", description="Run and operate Keelson.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())

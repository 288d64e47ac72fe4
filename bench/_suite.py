"""What the suite's database benchmarks share: arguments, a fresh database, the docs section."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shlex
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from _docs import write_section

from keelson_dev.testing import fresh_database

__all__ = ["arguments", "record", "run"]

Bench = Callable[[argparse.Namespace, str], Awaitable[str]]


def arguments(doc: str, *, redis_db: int) -> argparse.ArgumentParser:
    """A parser with `--database-url`, `--redis-url` (from the test env) and `--no-docs`."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "KEELSON_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("KEELSON_TEST_REDIS_URL", f"redis://127.0.0.1:6379/{redis_db}"),
    )
    parser.add_argument("--no-docs", action="store_true", help="print only")
    return parser


def run(args: argparse.Namespace, bench: Bench) -> str:
    """`bench(args, url)` on a database created for the run (and dropped); its table printed."""
    with fresh_database(args.database_url, prefix="keelson_bench") as url:
        body = asyncio.run(bench(args, url))
    print(body)
    return body


def record(section: str, intro: str, body: str, *, notes: Sequence[str] = ()) -> None:
    """Write `section` of docs/benchmarks.md: what it measures, the command, the machine."""
    script = f"bench/{Path(sys.argv[0]).name}"
    command = shlex.join([".venv/bin/python", script, *sys.argv[1:]])
    write_section(
        section,
        "\n".join(
            [
                intro,
                "",
                f"Command: `{command}`",
                "",
                f"{platform.python_implementation()} {platform.python_version()}, "
                f"{os.cpu_count()} CPUs shared with other work (a loaded machine), so figures"
                f" are noisy. Recorded {time.strftime('%Y-%m-%d %H:%M')}.",
                "",
                body,
                *(["", *notes] if notes else []),
            ]
        ),
    )

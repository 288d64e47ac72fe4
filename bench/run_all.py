"""Run every benchmark in turn (`make bench`); each writes its section of docs/benchmarks.md.

PostgreSQL and Redis come from KEELSON_TEST_DATABASE_URL / KEELSON_TEST_REDIS_URL, or
embedded ones are started for the run. `--only bus,auth` picks benchmarks; `--quick`
shrinks their sizes for a smoke run (figures then are not the documented ones).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from keelson_dev.embedded import EmbeddedPostgres, EmbeddedValkey, free_port

BENCH = Path(__file__).resolve().parent
ORDER = (
    "bus",
    "auth",
    "logs",
    "notifications",
    "logging_path",
    "rate_limit",
    "upstream_hop",
    "gateway",
    "gateway_instructions",
    "up",
    "payments",
)
QUICK = {
    "bus": ["--events", "5000", "--rounds", "1", "--no-docs"],
    "auth": ["--verifications", "2000", "--logins", "4", "--no-docs"],
    "logs": ["--records", "5000", "--runs", "1", "--no-docs"],
    "notifications": ["--emails", "500", "--runs", "1", "--seconds", "2", "--no-docs"],
    "logging_path": ["--calls", "2000", "--repeat", "1"],  # prints only, writes no docs
    "rate_limit": ["--hits", "2000"],  # prints only, writes no docs
    "upstream_hop": ["--requests", "2000", "--no-docs"],
    "gateway": ["--duration", "3", "--no-docs"],
    "gateway_instructions": ["--seconds", "5", "--no-docs"],
    "up": ["--runs", "1", "--idle", "2", "--no-docs"],
    "payments": ["--webhooks", "200", "--intents", "100", "--no-docs"],
}


def arguments(name: str, database_url: str, redis_url: str, quick: bool) -> list[str]:
    args = {
        "bus": ["--redis-url", redis_url],
        "auth": ["--database-url", database_url, "--redis-url", redis_url],
        "logs": ["--database-url", database_url],
        "notifications": ["--database-url", database_url, "--redis-url", redis_url],
        "gateway": ["--redis-url", redis_url],
        "gateway_instructions": ["--redis-url", redis_url],
        "rate_limit": ["--redis-url", redis_url],
        "payments": ["--database-url", database_url, "--redis-url", redis_url],
    }.get(name, [])
    return args + (QUICK[name] if quick else [])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(ORDER))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    chosen = [name for name in ORDER if name in args.only.split(",")]

    workdir = Path(tempfile.mkdtemp(prefix="keelson-bench-"))
    database_url = os.environ.get("KEELSON_TEST_DATABASE_URL")
    redis_url = os.environ.get("KEELSON_TEST_REDIS_URL")
    postgres = valkey = None
    if database_url is None:
        postgres = EmbeddedPostgres(workdir / "pg", free_port())
        postgres.start()
        database_url = postgres.url
    if redis_url is None:
        server = EmbeddedValkey(workdir / "valkey", free_port())
        valkey = server.start()
        redis_url = server.url
    failed: list[str] = []
    try:
        for name in chosen:
            print(f"\n=== bench/{name}.py", flush=True)
            command = [sys.executable, str(BENCH / f"{name}.py")]
            command += arguments(name, database_url, redis_url, args.quick)
            if subprocess.run(command, check=False).returncode != 0:
                failed.append(name)
    finally:
        if postgres is not None:
            postgres.stop()
        if valkey is not None:
            EmbeddedValkey.stop(valkey)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

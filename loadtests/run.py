"""`make load`: a bounded, headless Locust run against a running suite, judged.

1. Reads the admin's credentials where `make up` takes them (the auth service's settings:
   KEELSON_ADMIN_EMAIL / KEELSON_ADMIN_PASSWORD from the environment, `.env.<env>` or the
   configuration; `make up-load` sets them) and waits for the gateway to be ready.
2. Before the clock starts: registers and logs in one account per simulated user (the
   users refresh these tokens, they never re-create them) and logs the admin in.
3. Runs Locust headless for `--time` with the scenario's user classes, writing the HTML
   report and the CSV stats to loadtests/reports/<timestamp>/ (git-ignored).
4. Prints where they are, the requests/s and p50/p95/p99, and exits 1 when more than
   `--max-error-rate` of the requests failed (a 429 is a failure except in the
   rate-limit scenario, where it is the expected answer), 2 when the run itself failed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
REPORTS = Path(os.environ.get("KEELSON_LOAD_REPORTS", ROOT / "loadtests" / "reports"))
SCENARIOS = {
    "mixed": ["AccountUser", "PaymentUser", "NotificationUser", "AdminUser", "HealthUser"],
    "payments": ["PaymentUser"],
    "notifications": ["NotificationUser"],
    "rate-limit": ["RateLimitUser"],
}
PASSWORD = os.environ.get("KEELSON_LOAD_PASSWORD", "load-test-password-0123")


def admin_credentials() -> tuple[str, str] | None:
    """The admin the auth service creates at start, read as `make up` gives it its settings."""
    from auth_service.settings import Settings
    from keelson.config import load_settings

    settings = load_settings(Settings)
    if not settings.admin_email or settings.admin_password is None:
        return None
    return settings.admin_email, settings.admin_password.get_secret_value()


def wait_ready(host: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{host}/health/ready", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"make load: the gateway at {host} is not ready (run `make up-load`)")
        time.sleep(0.5)


def provision(host: str, count: int, admin: tuple[str, str] | None) -> dict[str, Any]:
    """`count` accounts with a fresh token pair each, and the admin's access token."""

    def account(_: int) -> dict[str, str]:
        email = f"load-{uuid.uuid4().hex[:16]}@example.com"
        with httpx.Client(base_url=host, timeout=60) as client:
            body = {"email": email, "password": PASSWORD, "name": "Load Test"}
            registered = client.post("/api/v1/auth/register", json=body)
            if registered.status_code != 202:  # the same answer whether or not it is taken
                raise SystemExit(f"make load: register answered {registered.status_code}")
            login = client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
            if login.status_code != 200:
                raise SystemExit(f"make load: login answered {login.status_code}")
            tokens = login.json()
            return {"email": email, **{k: tokens[k] for k in ("access_token", "refresh_token")}}

    with ThreadPoolExecutor(max_workers=4) as pool:
        accounts = list(pool.map(account, range(count)))
    provisioned: dict[str, Any] = {"accounts": accounts}
    if admin is not None:
        login = httpx.post(
            f"{host}/api/v1/auth/login",
            json={"email": admin[0], "password": admin[1]},
            timeout=60,
        )
        if login.status_code != 200:
            raise SystemExit(
                f"make load: the admin {admin[0]} could not log in ({login.status_code}):"
                " is the suite running with the same KEELSON_ADMIN_* settings?"
            )
        provisioned["admin"] = {"access_token": login.json()["access_token"]}
    return provisioned


def summary(stats_csv: Path) -> dict[str, float]:
    """The Aggregated row; a percentile Locust has no figure for ("N/A") is NaN."""
    with stats_csv.open() as source:
        row = next(r for r in csv.DictReader(source) if r["Name"] == "Aggregated")

    def number(column: str) -> float:
        return float(row[column]) if row[column] not in ("", "N/A") else float("nan")

    names = {"requests": "Request Count", "failures": "Failure Count", "rps": "Requests/s"}
    return {key: number(column) for key, column in names.items()} | {
        p: number(f"{p[1:]}%") for p in ("p50", "p95", "p99")
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make load", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default=os.environ.get("LOAD_HOST", "http://127.0.0.1:8000"))
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="mixed")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--spawn-rate", type=float, default=10)
    parser.add_argument("--time", default="60s", help="Locust's --run-time (bounded)")
    parser.add_argument("--max-error-rate", type=float, default=0.01)
    parser.add_argument("--ready-timeout", type=float, default=60)
    args = parser.parse_args(argv)

    admin = admin_credentials()
    if args.scenario in ("mixed", "payments") and admin is None:
        print(
            "make load: no admin configured (KEELSON_ADMIN_EMAIL / KEELSON_ADMIN_PASSWORD);"
            " start the suite with `make up-load`, which sets them",
            file=sys.stderr,
        )
        return 2
    wait_ready(args.host, args.ready_timeout)
    started = time.monotonic()
    accounts = 0 if args.scenario == "rate-limit" else args.users
    provisioned = provision(args.host, accounts, admin)
    print(
        f"provisioned {len(provisioned['accounts'])} accounts in {time.monotonic() - started:.0f} s"
    )

    folder = REPORTS / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as accounts:
        json.dump(provisioned, accounts)
    try:
        command = [
            str(Path(sys.executable).parent / "locust"),
            "-f", str(ROOT / "loadtests" / "locustfile.py"),
            "--headless", "--only-summary",
            "-u", str(args.users), "-r", str(args.spawn_rate), "-t", args.time,
            "--stop-timeout", "10",
            "--host", args.host,
            "--html", str(folder / "report.html"),
            "--csv", str(folder / "stats"),
            *SCENARIOS[args.scenario],
        ]  # fmt: skip
        env = {**os.environ, "KEELSON_LOAD_ACCOUNTS": accounts.name}
        result = subprocess.run(command, env=env, cwd=ROOT)
    finally:
        os.unlink(accounts.name)  # tokens: not left on disk
    stats = folder / "stats_stats.csv"
    print(f"reports: {folder}/report.html and {folder}/stats_*.csv")
    if not stats.exists():
        print(f"make load: Locust wrote no stats (exit {result.returncode})", file=sys.stderr)
        return 2
    figures = summary(stats)
    rate = figures["failures"] / figures["requests"] if figures["requests"] else 1.0
    print(
        f"{args.scenario}: {figures['requests']:.0f} requests, {figures['rps']:.1f} req/s,"
        f" p50 {figures['p50']:.0f} ms, p95 {figures['p95']:.0f} ms, p99 {figures['p99']:.0f} ms,"
        f" errors {figures['failures']:.0f} ({rate:.2%}; limit {args.max_error_rate:.0%})"
    )
    if figures["requests"] == 0 or rate > args.max_error_rate:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

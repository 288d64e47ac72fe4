"""The suite `keelson up` runs: the five services, their ports and environment, migrations."""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from sqlalchemy.engine import make_url

from keelson.auth import IdentityKey
from keelson_dev.embedded import EmbeddedPostgres, EmbeddedValkey
from keelson_dev.supervision import TERMINAL, Program, socket_path

__all__ = [
    "SERVICES",
    "Layout",
    "Service",
    "ensure_database",
    "free_port_block",
    "migrate_all",
    "port_in_use",
    "postgres_answers",
    "readiness",
    "redis_answers",
]


@dataclass(frozen=True)
class Service:
    name: str
    package: str
    port_offset: int

    def migrations_dir(self) -> Path:
        from keelson.db import migrations_dir

        return migrations_dir(self.package)


SERVICES: tuple[Service, ...] = (
    Service("gateway", "gateway", 0),
    Service("auth", "auth_service", 1),
    Service("logs", "logs_service", 2),
    Service("notifications", "notifications_service", 3),
    Service("payments", "payments_service", 4),
)

_EMBEDDED_DATABASE = "keelson"
DRAIN_PAUSE_SECONDS = 2


@dataclass(frozen=True)
class Layout:
    """Where everything lives and listens; external URLs replace the embedded servers."""

    root: Path
    state_dir: Path
    host: str = "127.0.0.1"
    base_port: int = 8000
    zmq_base_port: int = 5555
    postgres_port: int = 55432
    valkey_port: int = 56379
    smtp_port: int = 58025
    external_database_url: str | None = None
    external_redis_url: str | None = None
    # No master key configured: the services get this state folder's own (`master_key`).
    own_master_key: bool = False
    # No identity keys configured: the gateway gets this state folder's own signing key
    # (`identity_key`, by file), every service its public half.
    own_identity_key: bool = False

    @property
    def embedded_postgres(self) -> EmbeddedPostgres | None:
        if self.external_database_url is not None:
            return None
        return EmbeddedPostgres(self.state_dir / "postgres", self.postgres_port)

    @property
    def embedded_valkey(self) -> EmbeddedValkey | None:
        if self.external_redis_url is not None:
            return None
        return EmbeddedValkey(self.state_dir / "valkey", self.valkey_port)

    @property
    def database_url(self) -> str:
        if self.external_database_url is not None:
            return self.external_database_url
        return f"postgresql://postgres@127.0.0.1:{self.postgres_port}/{_EMBEDDED_DATABASE}"

    @property
    def redis_url(self) -> str:
        if self.external_redis_url is not None:
            return self.external_redis_url
        return f"redis://127.0.0.1:{self.valkey_port}/0"

    @property
    def mail_dir(self) -> Path:
        """Where the SMTP sink stores what it receives, one `.eml` file per message."""
        return self.state_dir / "mail"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def config_path(self) -> Path:
        return self.state_dir / "supervisord.conf"

    @property
    def master_key_path(self) -> Path:
        return self.state_dir / "master.key"

    def master_key(self) -> str:
        """This state folder's own master key, made at random on first use (mode 0600).

        Every deployment `keelson up` runs has a key of its own: with the development
        constant, anyone who read the source could sign identity headers or log batches
        for it.
        """
        path = self.master_key_path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_text().strip()
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(48) + "\n")
        return path.read_text().strip()

    @property
    def identity_key_path(self) -> Path:
        return self.state_dir / "identity.key"

    def identity_key(self) -> IdentityKey:
        """This state folder's own Ed25519 identity key, made at random on first use (mode
        0600). Only the gateway is told where it is; the services get its public half, so
        none of them can sign an identity header."""
        path = self.identity_key_path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return IdentityKey.from_text([path.read_text()])
        with os.fdopen(fd, "w") as out:
            out.write(IdentityKey.generate().secret_text() + "\n")
        return IdentityKey.from_text([path.read_text()])

    @property
    def socket(self) -> Path:
        return socket_path(self.state_dir)

    @property
    def bus_xsub_endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.zmq_base_port}"

    @property
    def bus_xpub_endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.zmq_base_port + 1}"

    @property
    def log_endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.zmq_base_port + 2}"

    def port(self, service: Service) -> int:
        return self.base_port + service.port_offset

    def url(self, service: Service) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port(service)}"

    def ports(self) -> dict[str, int]:
        """Every port the suite binds, by what binds it."""
        ports = {service.name: self.port(service) for service in SERVICES}
        ports["bus (XSUB)"] = self.zmq_base_port
        ports["bus (XPUB)"] = self.zmq_base_port + 1
        ports["logs (ZeroMQ)"] = self.zmq_base_port + 2
        if self.external_database_url is None:
            ports["postgres"] = self.postgres_port
        if self.external_redis_url is None:
            ports["valkey"] = self.valkey_port
        ports["smtp sink"] = self.smtp_port
        return ports

    def service_environment(self) -> dict[str, str]:
        """What every service gets in its environment (the port is per program)."""
        auth = SERVICES[1]
        env = {
            "KEELSON_HOST": self.host,
            "KEELSON_DATABASE_URL": self.database_url,
            "KEELSON_REDIS_URL": self.redis_url,
            "KEELSON_BUS__ZMQ_XSUB_ENDPOINT": self.bus_xsub_endpoint,
            "KEELSON_BUS__ZMQ_XPUB_ENDPOINT": self.bus_xpub_endpoint,
            "KEELSON_LOG__SHIP_ENDPOINT": self.log_endpoint,
            "KEELSON_LOGS__BIND_ENDPOINT": self.log_endpoint,
            "KEELSON_LOG__SPILL_DIR": str(self.state_dir / "spill"),
            "KEELSON_PLUGINS__AUTH__JWKS_URL": f"{self.url(auth)}/.well-known/jwks.json",
            # The gateway reaches the services from the address it calls them on.
            "KEELSON_TRUSTED_PROXIES": json.dumps([urlsplit(self.url(auth)).hostname]),
            # Auth's OAuth2 metadata links to the gateway, where clients reach it.
            "KEELSON_AUTH__PUBLIC_URL": self.url(SERVICES[0]),
            "KEELSON_NOTIFICATIONS__EMAIL__HOST": "127.0.0.1",
            "KEELSON_NOTIFICATIONS__EMAIL__PORT": str(self.smtp_port),
            "KEELSON_NOTIFICATIONS__EMAIL__SECURITY": "none",
            "KEELSON_NOTIFICATIONS__PUBLIC_BASE_URL": self.url(SERVICES[0]),
            # SIGTERM turns readiness off for this long before the listener closes (the
            # gateway's health checks see it first); stopwaitsecs leaves room for it.
            "KEELSON_DRAIN_PAUSE_SECONDS": str(DRAIN_PAUSE_SECONDS),
            "PYTHONUNBUFFERED": "1",
        }
        if self.own_identity_key:
            env["KEELSON_IDENTITY__PUBLIC_KEYS"] = json.dumps(self.identity_key().public_keys)
        for service in SERVICES[1:]:
            key = f"KEELSON_PLUGINS__ROUTING__UPSTREAMS__{service.name.upper()}__URL"
            env[key] = self.url(service)
        return env

    def programs(self) -> list[Program]:
        """The servers first (priority 10, so they stop last), then the services on demand."""
        programs: list[Program] = []
        postgres = self.embedded_postgres
        if postgres is not None:
            programs.append(
                Program(
                    name="postgres",
                    command=postgres.command(),
                    directory=postgres.data_dir,
                    log=self.logs_dir / "postgres.log",
                    user=postgres.user,
                    priority=10,
                    startsecs=1,
                    # SIGINT is PostgreSQL's fast shutdown; the postmaster stops its own children.
                    stopsignal="INT",
                    stopasgroup=False,
                    stopwaitsecs=30,
                )
            )
        valkey = self.embedded_valkey
        if valkey is not None:
            programs.append(
                Program(
                    name="valkey",
                    command=valkey.command(),
                    directory=valkey.data_dir,
                    log=self.logs_dir / "valkey.log",
                    priority=10,
                    startsecs=1,
                    stopwaitsecs=15,
                )
            )
        programs.append(
            Program(
                name="mail",
                command=[
                    sys.executable,
                    "-m",
                    "keelson_dev.mailsink",
                    "--dir",
                    str(self.mail_dir),
                    "--port",
                    str(self.smtp_port),
                ],
                directory=self.root,
                log=self.logs_dir / "mail.log",
                priority=10,
                startsecs=1,
                stopwaitsecs=10,
            )
        )
        for service in SERVICES:
            programs.append(
                Program(
                    name=service.name,
                    command=[sys.executable, "-m", service.package],
                    directory=self.root,
                    log=TERMINAL,
                    environment=self._program_environment(service),
                    priority=100,
                    autostart=False,
                    startsecs=3,
                    startretries=8,
                    stopwaitsecs=15 + DRAIN_PAUSE_SECONDS,
                )
            )
        return programs

    def _program_environment(self, service: Service) -> dict[str, str]:
        env = {"KEELSON_PORT": str(self.port(service))}
        if self.own_identity_key and service is SERVICES[0]:  # the gateway alone signs
            env["KEELSON_IDENTITY__SIGNING_KEY_FILE"] = str(self.identity_key_path)
        return env


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port_block(size: int) -> int:
    """A base port with `size` consecutive free ports, below the kernel's ephemeral range."""
    for _ in range(200):
        base = random.randint(20_000, 32_000)
        if not any(port_in_use(base + offset) for offset in range(size)):
            return base
    raise RuntimeError("no block of free ports")


def postgres_answers(url: str) -> bool:
    """Whether the server accepts a connection (it answers TCP before it can)."""
    import asyncpg

    async def probe() -> bool:
        try:
            conn = await asyncpg.connect(_dsn(url), timeout=2)
        except asyncpg.InvalidCatalogNameError:
            return True  # up, and `ensure_database` will create the database
        except (TimeoutError, OSError, asyncpg.PostgresError):
            return False
        await conn.close()
        return True

    return asyncio.run(probe())


def redis_answers(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _dsn(url: str, *, database: str | None = None) -> str:
    parsed = make_url(url.replace("postgres://", "postgresql://", 1)).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


def ensure_database(url: str) -> bool:
    """Create the URL's database when it is missing; True when it was created."""
    import asyncpg

    async def run() -> bool:
        try:
            conn = await asyncpg.connect(_dsn(url), timeout=10)
        except asyncpg.InvalidCatalogNameError:
            pass
        else:
            await conn.close()
            return False
        name = make_url(_dsn(url)).database
        admin = await asyncpg.connect(_dsn(url, database="postgres"), timeout=10)
        try:
            quoted = '"' + str(name).replace('"', '""') + '"'
            await admin.execute(f"CREATE DATABASE {quoted}")
        except asyncpg.DuplicateDatabaseError:
            return False
        finally:
            await admin.close()
        return True

    return asyncio.run(run())


def migrate_all(
    database_url: str,
    services: Iterable[Service] = SERVICES,
    *,
    on_done: Callable[[Service, float], None] | None = None,
) -> None:
    """Upgrade every service's schema to head, one after the other."""
    from keelson.db import migrate

    for service in services:
        started = time.perf_counter()
        migrate(service.migrations_dir(), database_url)
        if on_done is not None:
            on_done(service, time.perf_counter() - started)


def readiness(layout: Layout, *, timeout: float = 2.0) -> Mapping[str, int | None]:
    """Each service's `/health/ready` status code, None when it does not answer."""
    codes: dict[str, int | None] = {}
    with httpx.Client(timeout=timeout) as client:
        for service in SERVICES:
            try:
                codes[service.name] = client.get(f"{layout.url(service)}/health/ready").status_code
            except httpx.HTTPError:
                codes[service.name] = None
    return codes

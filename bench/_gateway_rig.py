"""The upstream rig the gateway's profiling benchmarks share: nginx, a JWKS, a token.

`bench/gateway_instructions.py` and `bench/gateway_profile.py` both drive the gateway's
authenticated GET of `bench/gateway.py` against nginx answering `{"ok":true}`; this is
that set-up once, plus the process-tree helpers a granian server (a main process and
its forked workers) needs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from gateway import (  # bench/gateway.py, beside this file
    PATH,
    gateway_values,
    get_scope,
    nginx_config,
    spawn,
    stop,
    token,
)
from keelson.auth import IdentityKey
from keelson.keys import SigningKey
from keelson_dev.embedded import free_port, wait_for_port

__all__ = ["Rig", "in_process_gateway", "process_tree", "upstream_rig"]


@dataclass(frozen=True)
class Rig:
    tmp: Path  # a scratch folder, removed afterwards
    upstream: str  # nginx's base URL, answering {"ok":true} and the JWKS
    headers: dict[str, str]  # the bearer token the JWKS verifies


@contextmanager
def upstream_rig(prefix: str) -> Iterator[Rig]:
    """nginx as the upstream (and JWKS host) for as long as the block runs."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(tmp, 0o755)  # nginx's worker reads the JWKS as another user
    key = SigningKey.generate()
    (tmp / "jwks.json").write_text(json.dumps({"keys": [key.public_jwk()]}))
    os.chmod(tmp / "jwks.json", 0o644)
    upstream_port = free_port()
    nginx = spawn(["nginx", "-c", str(nginx_config(tmp, upstream_port, free_port()))], cpus=None)
    try:
        wait_for_port(upstream_port, timeout=10)
        yield Rig(
            tmp,
            f"http://127.0.0.1:{upstream_port}",
            {"Authorization": f"Bearer {token(key)}"},
        )
    finally:
        stop(nginx)
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def in_process_gateway(
    prefix: str,
    redis_url: str | None,
    *,
    shape: Callable[[dict[str, Any], Path], None] | None = None,
    level: str = "INFO",
) -> Iterator[tuple[Any, bytes]]:
    """The gateway's ASGI app (bench/gateway.py's settings, console logging at `level` to
    /dev/null) in this process against the rig's nginx, and the `Authorization` value to
    send. `shape(values, tmp)` may change the settings' values first (`tmp`: the folder
    nginx serves from)."""
    # This file's folder holds bench/gateway.py: it must leave sys.path before the gateway
    # package can be imported under its own name.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    del sys.modules["gateway"]
    from gateway.app import create_app
    from gateway.settings import Settings
    from keelson.config import LogSettings
    from keelson.logging import configure_logging

    identity = IdentityKey.generate()
    os.environ["KEELSON_IDENTITY__SIGNING_KEY"] = identity.secret_text()
    os.environ["KEELSON_IDENTITY__PUBLIC_KEYS"] = json.dumps(identity.public_keys)
    with upstream_rig(prefix) as rig:
        values = gateway_values(rig.upstream, redis_url, prefix.strip("-").removeprefix("keelson-"))
        if shape is not None:
            shape(values, rig.tmp)
        settings = Settings(**values, log=LogSettings(ship_endpoint=None, level=level))
        configure_logging(settings)
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.setStream(open(os.devnull, "w"))  # noqa: SIM115
        yield create_app(settings), rig.headers["Authorization"].encode()


async def drive_in_turn(
    app: Any,
    bearer: bytes,
    requests: int,
    *,
    counted: Callable[[bool], None] | None = None,
) -> None:
    """200 warm-up GETs (caches and pools filled), then `requests` more, one after another,
    through `app`'s lifespan; `counted(True)` and `counted(False)` around the latter. Every
    answer must be 200."""
    headers = [(b"host", b"gateway"), (b"authorization", bearer), (b"accept", b"*/*")]
    statuses: set[int] = set()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.add(message["status"])

    async with app.router.lifespan_context(app):
        for _ in range(200):
            await app(get_scope(headers), receive, send)
        if counted is not None:
            counted(True)
        for _ in range(requests):
            await app(get_scope(headers), receive, send)
        if counted is not None:
            counted(False)
    if statuses != {200}:
        raise RuntimeError(f"unexpected statuses {sorted(statuses)} for {PATH}")


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants: granian serves from forked worker processes."""
    root = psutil.Process(pid)
    return [root.pid, *(child.pid for child in root.children(recursive=True))]

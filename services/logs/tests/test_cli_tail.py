"""`keelson logs tail` against the real log service, with a real access token."""

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from jose import jwt
from logs_testkit import sender_credentials

from keelson.auth import DEFAULT_AUDIENCE, DEFAULT_ISSUER
from keelson.keys import SigningKey
from keelson.logging import LogShipper
from keelson_dev.cli import main
from keelson_dev.testing import LiveServer, eventually
from logs_service.app import create_app
from logs_service.plugins import TAIL_HUB
from logs_service.settings import Settings

KEY = SigningKey.generate()
# The one sender the module's log service admits (records of each test need a name of their own).
CLI_SERVICE = f"cli-{uuid.uuid4().hex[:8]}"


def access_token(*roles: str) -> str:
    now = int(time.time())
    claims = {
        "iss": DEFAULT_ISSUER,
        "aud": DEFAULT_AUDIENCE,
        "sub": "operator-1",
        "roles": list(roles),
        # What auth's default role table grants: the log routes need `logs:read`.
        "scope": "logs:read" if {"admin", "ops"} & set(roles) else "profile:read",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, KEY.private_pem, algorithm="ES256", headers={"kid": KEY.kid})


@pytest.fixture(scope="module")
def jwks_url() -> Iterator[str]:
    """The auth service's JWKS document, as far as verification is concerned."""
    app = FastAPI()

    @app.get("/.well-known/jwks.json")
    async def jwks() -> dict[str, list[dict[str, str]]]:
        return {"keys": [KEY.public_jwk()]}

    with LiveServer(app) as server:
        yield f"{server.url}/.well-known/jwks.json"


@pytest.fixture(scope="module")
def log_service(
    make_logs_settings: Callable[..., Settings], jwks_url: str
) -> Iterator[tuple[LiveServer, Settings]]:
    settings = make_logs_settings(senders=[CLI_SERVICE])
    settings.plugins["auth"] = settings.plugins["auth"].model_copy(update={"jwks_url": jwks_url})
    with LiveServer(create_app(settings)) as server:
        yield server, settings


async def test_tail_prints_new_records_in_colour(
    log_service: tuple[LiveServer, Settings],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server, settings = log_service
    service_name = CLI_SERVICE
    hub = server.server.config.app.state.container.resolve(TAIL_HUB)
    argv = ["logs", "tail", "--url", server.url, "--service", service_name]
    argv += ["--level", "warning", "--max", "2", "--colour", "--token", access_token("ops")]
    tail = asyncio.create_task(asyncio.to_thread(main, argv))

    async def connected() -> bool:
        return hub.subscribers > 0

    await eventually(connected, timeout=10)
    shipper = LogShipper(
        settings.logs.bind_endpoint,
        service=service_name,
        spill_dir=tmp_path,
        credentials=sender_credentials(service_name),
    )
    logger = logging.getLogger(f"cli.{service_name}")
    logger.handlers, logger.propagate = [shipper], False
    try:
        logger.warning("disk at 91%%", extra={"request_id": "req-7"})
        logger.info("below the level asked for")
        logger.error("disk full")
        assert await asyncio.wait_for(tail, 20) == 0
    finally:
        shipper.close()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert f"[{service_name}]" in lines[0] and "WARNING" in lines[0]
    assert "disk at 91%" in lines[0] and "request_id=req-7" in lines[0]
    assert "ERROR" in lines[1] and "disk full" in lines[1]
    assert "\x1b[" in lines[1]


def test_tail_without_an_operator_token_says_why(
    log_service: tuple[LiveServer, Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    server, _ = log_service
    argv = ["logs", "tail", "--url", server.url, "--max", "1", "--token", access_token("user")]
    assert main(argv) == 1
    assert "HTTP 403" in capsys.readouterr().err
    assert main(["logs", "tail", "--url", server.url, "--max", "1", "--token", ""]) == 1
    assert "HTTP 401" in capsys.readouterr().err

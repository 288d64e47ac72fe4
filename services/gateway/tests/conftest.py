import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from gateway_testkit import ServerThread, gateway_settings
from gateway_upstream import TokenMint, create_auth_upstream, create_upstream

from keelson.auth import identity_key
from keelson.keys import KeyManager


@pytest.fixture(scope="session")
def upstream() -> Iterator[ServerThread]:
    server = ServerThread(create_upstream()).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mint() -> TokenMint:
    return TokenMint()


@pytest.fixture(scope="session")
def auth_upstream(mint: TokenMint) -> Iterator[ServerThread]:
    key = identity_key(KeyManager(gateway_settings().master_key.get_secret_value()))
    server = ServerThread(create_auth_upstream(mint, key)).start()
    yield server
    server.stop()

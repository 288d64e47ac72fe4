import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from keelson.auth import identity_key
from keelson.keys import KeyManager

sys.path.insert(0, str(Path(__file__).parent))
# Checks shared from the testkit fail with pytest's explanation, as a test's own do.
pytest.register_assert_rewrite("gateway_testkit")

from gateway_testkit import ServerThread, gateway_settings  # noqa: E402
from gateway_upstream import TokenMint, create_auth_upstream, create_upstream  # noqa: E402


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

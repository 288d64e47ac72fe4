import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from gateway_testkit import ServerThread
from gateway_upstream import create_upstream


@pytest.fixture(scope="session")
def upstream() -> Iterator[ServerThread]:
    server = ServerThread(create_upstream()).start()
    yield server
    server.stop()

import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from keelson.config import BusSettings, Environment, LogSettings
from keelson.db import plain_url
from keelson_dev.embedded import free_port
from keelson_dev.testing import migrated, offline_auth_plugin
from logs_service.ingest import Ingestor
from logs_service.settings import IngestSettings, Settings
from logs_service.store import LogStore, create_pool
from logs_service.tail import TailHub


@pytest.fixture(scope="session")
def logs_database_url(test_database_url: str) -> str:
    return plain_url(migrated(test_database_url, "logs_service"))


@pytest.fixture(scope="session")
async def pool(logs_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(logs_database_url, schema="logs", max_size=8)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
def store(pool: asyncpg.Pool) -> LogStore:
    return LogStore(pool)


@pytest.fixture
def service_name() -> str:
    """Records of each test carry a service name of their own: the table is shared."""
    return f"svc-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def make_logs_settings(logs_database_url: str) -> Callable[..., Settings]:
    def make(*, redis_url: str | None = None, **ingest: Any) -> Settings:
        ingest.setdefault("bind_endpoint", f"tcp://127.0.0.1:{free_port()}")
        return Settings(
            env=Environment.TEST,
            database_url=logs_database_url,
            redis_url=redis_url,
            log=LogSettings(ship_endpoint=None),
            logs=IngestSettings(**ingest),
            bus=BusSettings(
                zmq_xsub_endpoint=f"tcp://127.0.0.1:{free_port()}",
                zmq_xpub_endpoint=f"tcp://127.0.0.1:{free_port()}",
            ),
            plugins=offline_auth_plugin(),
        )

    return make


@pytest.fixture
async def ingestor(store: LogStore) -> AsyncIterator[Ingestor]:
    settings = IngestSettings(bind_endpoint=f"tcp://127.0.0.1:{free_port()}")
    ingestor = Ingestor(settings, store, TailHub())
    await ingestor.start()
    yield ingestor
    await ingestor.stop(grace=5)


@pytest.fixture
def spill_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "spill"

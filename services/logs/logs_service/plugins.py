"""The log service's plugins: the records store, ZeroMQ ingestion, partition upkeep."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from keelson.bus import BUS
from keelson.db import plain_url
from keelson.events import Envelope
from keelson.keys import KeyManager
from keelson.plugins import Health, Key, Plugin, PluginMetadata, Priority
from logs_service.ingest import Ingestor, IntakeAuth
from logs_service.models import SCHEMA
from logs_service.records import row_from_envelope
from logs_service.settings import IngestSettings
from logs_service.store import LogStore, create_pool
from logs_service.tail import TailHub

__all__ = [
    "INGESTOR",
    "LOG_STORE",
    "TAIL_HUB",
    "AuditEventsPlugin",
    "IngestPlugin",
    "LogStorePlugin",
    "PartitionUpkeepPlugin",
    "upkeep_partitions",
]

_log = logging.getLogger("logs_service.plugins")

LOG_STORE: Key[LogStore] = Key("logs.store")
TAIL_HUB: Key[TailHub] = Key("logs.tail")
INGESTOR: Key[Ingestor] = Key("logs.ingestor")


def _ingest_settings(plugin: Plugin) -> IngestSettings:
    settings: IngestSettings = getattr(plugin.container.settings, "logs", IngestSettings())
    return settings


class LogStorePlugin(Plugin):
    """An asyncpg pool on the `logs` schema: COPY for ingestion, plain queries for the API."""

    metadata = PluginMetadata(
        name="log_store",
        priority=Priority.INFRASTRUCTURE,
        description="The partitioned records table (asyncpg)",
    )

    async def initialize(self) -> None:
        url = self.container.settings.database_url
        if url is None:
            raise RuntimeError("KEELSON_DATABASE_URL is not set")
        writers = _ingest_settings(self).writers
        self.pool = await create_pool(plain_url(url), schema=SCHEMA, max_size=writers + 6)
        self.container.provide(LOG_STORE, LogStore(self.pool, schema=SCHEMA))

    async def stop(self) -> None:
        try:
            await asyncio.wait_for(self.pool.close(), 10)
        except TimeoutError:
            self.pool.terminate()

    async def health(self) -> Health:
        await asyncio.wait_for(self.pool.fetchval("SELECT 1"), 3)
        return Health(ok=True)


class IngestPlugin(Plugin):
    """Receives shipped records on the ROUTER socket and commits them."""

    metadata = PluginMetadata(
        name="ingest",
        priority=Priority.BUSINESS,
        description="ZeroMQ log ingestion (acknowledged batches)",
        depends_on=("log_store",),
    )

    async def initialize(self) -> None:
        settings = _ingest_settings(self)
        self.hub = TailHub(queue_size=settings.tail_queue_size)
        curve = (
            IntakeAuth.derive(KeyManager.from_settings(self.container.settings), settings.senders)
            if settings.curve
            else None
        )
        self.ingestor = Ingestor(settings, self.container.resolve(LOG_STORE), self.hub, curve=curve)
        self.container.provide(TAIL_HUB, self.hub)
        self.container.provide(INGESTOR, self.ingestor)

    async def start(self) -> None:
        await self.ingestor.start()

    async def stop(self) -> None:
        await self.ingestor.stop(grace=self.container.settings.shutdown_grace_seconds)

    async def health(self) -> Health:
        failing = self.ingestor.failing_for
        if failing > 5:
            return Health(ok=False, detail=f"writes failing for {failing:.0f}s", critical=False)
        return Health(ok=True, detail=f"{self.hub.subscribers} tail clients")


class AuditEventsPlugin(Plugin):
    """Stores events published on the bus as logs (`logs.*`, e.g. audit trails) as records.

    The handler returns once the record is committed, so the bus acknowledges only then;
    a redelivered event has the same envelope id and is stored once.
    """

    metadata = PluginMetadata(
        name="audit_events",
        priority=Priority.BUSINESS,
        description="Bus events published as logs, stored as records",
        depends_on=("bus", "ingest"),
    )

    async def initialize(self) -> None:
        ingestor = self.container.resolve(INGESTOR)

        async def store_event(envelope: Envelope) -> None:
            await ingestor.submit([row_from_envelope(envelope)])

        topics = _ingest_settings(self).audit_topics
        self.container.resolve(BUS).subscribe(topics, store_event, group="logs")


async def upkeep_partitions(
    store: LogStore, *, retention_days: int, ahead_days: int, today: datetime | None = None
) -> list[str]:
    """Make the coming days' partitions and drop those past retention; returns dropped days."""
    day = (today or datetime.now(UTC)).date()
    await store.ensure_partitions(day + timedelta(days=n) for n in range(-1, ahead_days + 1))
    dropped = await store.drop_partitions_before(day - timedelta(days=retention_days))
    return [d.isoformat() for d in dropped]


class PartitionUpkeepPlugin(Plugin):
    """A scheduled task: partitions made ahead of time, partitions past retention dropped."""

    metadata = PluginMetadata(
        name="retention",
        priority=Priority.BUSINESS,
        description="Day partitions ahead of time; retention",
        depends_on=("log_store",),
    )

    async def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="logs-retention")

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    async def _run(self) -> None:
        settings = _ingest_settings(self)
        store = self.container.resolve(LOG_STORE)
        while True:
            try:
                dropped = await upkeep_partitions(
                    store,
                    retention_days=settings.retention_days,
                    ahead_days=settings.partitions_ahead_days,
                )
            except Exception as exc:
                _log.warning("partition upkeep failed, will retry: %s", type(exc).__name__)
                await asyncio.sleep(min(60.0, settings.maintenance_interval_seconds))
                continue
            if dropped:
                _log.info("dropped log partitions past retention: %s", ", ".join(dropped))
            await asyncio.sleep(settings.maintenance_interval_seconds)

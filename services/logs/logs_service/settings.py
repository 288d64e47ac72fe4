"""Settings of the logs service."""

from __future__ import annotations

from pydantic import BaseModel, Field

from keelson.config import KeelsonSettings

__all__ = ["IngestSettings", "Settings"]


class IngestSettings(BaseModel):
    """`logs.*` (env `KEELSON_LOGS__BIND_ENDPOINT`, `KEELSON_LOGS__RETENTION_DAYS`, ...)."""

    bind_endpoint: str = "tcp://127.0.0.1:5557"
    batch_max_records: int = Field(1000, gt=0)
    batch_max_seconds: float = Field(0.2, gt=0)
    max_record_bytes: int = Field(64 * 1024, gt=0)
    max_message_bytes: int = Field(16 * 1024 * 1024, gt=0)
    writers: int = Field(2, ge=1)
    queued_batches: int = Field(4, ge=1)
    receive_hwm: int = Field(32, ge=1)
    retry_max_seconds: float = Field(5.0, gt=0)
    retention_days: int = Field(14, ge=1)
    partitions_ahead_days: int = Field(3, ge=1)
    maintenance_interval_seconds: float = Field(3600.0, gt=0)
    reject_log_interval_seconds: float = Field(60.0, gt=0)
    tail_queue_size: int = Field(1000, ge=1)
    # A quiet tail sends a comment this often: below the gateway's upstream read timeout
    # (10 s by default), which counts the silence between two chunks of an answer, so that
    # a tail with nothing to say stays open through the gateway.
    tail_keepalive_seconds: float = Field(5.0, gt=0, le=3600)
    # A tail ends, cleanly, this long after it began; a Server-Sent Events client (and
    # `keelson logs tail`) connects again. Nothing holds a connection for ever.
    tail_max_seconds: float = Field(3600.0, gt=0, le=86400)
    audit_topics: str = "logs.*"
    # Senders authenticate with CURVE keys derived from the master key and their service
    # name; records are stored under the name whose key was authenticated.
    curve: bool = True
    senders: list[str] = Field(
        default_factory=lambda: ["gateway", "auth", "logs", "notifications", "payments"],
        max_length=1000,
    )
    # Records stamped later than this ahead of the intake's clock are stored at that bound.
    max_clock_skew_seconds: float = Field(300.0, ge=0)


class Settings(KeelsonSettings):
    service: str = "logs"
    port: int = 8002
    logs: IngestSettings = IngestSettings()

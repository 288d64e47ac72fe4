"""Prometheus metrics of the log service's ingestion."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from logs_service.records import Rejection

__all__ = [
    "BATCH_SECONDS",
    "DUPLICATES",
    "INGESTED",
    "QUEUED_BATCHES",
    "REJECTED",
    "TAIL_DROPPED",
    "WRITE_RETRIES",
]

INGESTED = Counter("logs_records_ingested_total", "Log records committed", ["source"])
DUPLICATES = Counter("logs_records_duplicate_total", "Log records received again and skipped")
REJECTED = Counter("logs_records_rejected_total", "Log records refused and dropped", ["reason"])
WRITE_RETRIES = Counter("logs_write_retries_total", "Batch writes retried after a failure")
BATCH_SECONDS = Histogram(
    "logs_batch_write_seconds",
    "Time to commit one batch",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
QUEUED_BATCHES = Gauge("logs_queued_batches", "Batches waiting for a database writer")
TAIL_DROPPED = Counter("logs_tail_dropped_total", "Records a slow live-tail client missed")

# Every label value at zero from the start: a rate over them answers 0, not "no data",
# before the first record (and the dashboards' ingested/dropped panels always have series).
for _source in ("bus", "zmq"):
    INGESTED.labels(_source)
for _reason in Rejection:
    REJECTED.labels(_reason.value)

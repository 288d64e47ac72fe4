"""The shipper's spill files: encoded records kept on disk until the log service has them.

`write` only appends to an in-memory chunk: the disk is written by `write_pending`, which
the shipper's own thread calls, so a logging call never waits on a disk under load. Only
when that thread falls `_OVERDUE_BYTES` behind does `write` write the chunk itself. A
process killed outright loses that chunk, as it loses its in-memory buffer.

A spill directory holds segments, files of JSON lines named
`<service>.<pid>.<n>.<random>.jsonl`. The process that owns a segment holds an exclusive
`flock` on it for as long as it has the file open, so a segment whose lock can be taken
belongs to nobody (its process closed its shipper or died) and is adopted: read and sent
again by whichever shipper takes the lock first. Records sent twice that way are
de-duplicated by id at the log service.
"""

from __future__ import annotations

import fcntl
import os
import threading
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

__all__ = ["SpillSegment", "SpillStore"]

_OVERDUE_BYTES = 1024 * 1024


@dataclass(eq=False)
class SpillSegment:
    """One spill file; `outstanding` counts batches read from it and not yet acknowledged."""

    path: Path
    fd: int
    size: int = 0
    reader: BinaryIO | None = None
    exhausted: bool = False
    outstanding: int = 0
    closed: bool = field(default=False, repr=False)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.reader is not None:
            self.reader.close()
        os.close(self.fd)  # releases the flock: the segment is free for adoption


class SpillStore:
    """Bounded on-disk queue of records; `write` is thread-safe, reading is for one thread."""

    def __init__(self, directory: Path, *, max_bytes: int, prefix: str) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.prefix = prefix
        self._lock = threading.Lock()  # state; held briefly, never across disk I/O
        self._io_lock = threading.Lock()  # the current segment's writes and its rotation
        self._current: SpillSegment | None = None
        self._readable: deque[SpillSegment] = deque()
        self._owned: set[SpillSegment] = set()
        self._chunk: list[bytes] = []
        self._chunk_bytes = 0
        self._writing = 0  # chunks taken for writing and not yet on disk
        self._bytes = 0
        self._sequence = 0
        self._failed = 0

    @property
    def size(self) -> int:
        return self._bytes

    def has_data(self) -> bool:
        with self._lock:  # one consistent look: a write in transit moves between these
            current = self._current is not None and self._current.size > 0
            return bool(self._readable) or current or bool(self._chunk) or self._writing > 0

    @property
    def pending(self) -> bool:
        return bool(self._chunk)

    def write(self, lines: list[bytes]) -> int:
        """Take whole lines while they fit under `max_bytes`; returns how many were taken."""
        with self._lock:
            room = self.max_bytes - self._bytes
            taken = 0
            for line in lines:
                size = len(line) + 1
                if size > room:
                    break
                self._chunk.append(line)
                self._chunk_bytes += size
                room -= size
                taken += 1
            self._bytes = self.max_bytes - room
            overdue = self._chunk_bytes >= _OVERDUE_BYTES
        if overdue:
            self.write_pending()
        return taken

    def write_pending(self) -> None:
        """Write the chunk out to the current segment."""
        with self._io_lock:
            self._write_chunk()

    def take_failed(self) -> int:
        """How many lines the disk refused since the last call (they are gone)."""
        with self._lock:
            failed, self._failed = self._failed, 0
            return failed

    def _write_chunk(self) -> None:
        """Called with `_io_lock` held. Until the lines are on disk, `_writing` counts them
        as held (`has_data`), so nobody sees the store empty while they are in transit."""
        with self._lock:
            if not self._chunk:
                return
            chunk, self._chunk, self._chunk_bytes = self._chunk, [], 0
            self._writing += 1
        data = b"\n".join(chunk) + b"\n"
        written = 0
        try:
            if self._current is None:
                self._current = self._open_segment()
            view = memoryview(data)
            while view:
                view = view[os.write(self._current.fd, view) :]
            written = len(data)
        except OSError:
            with self._lock:
                self._failed += len(chunk)
                self._bytes -= len(data)
        finally:
            with self._lock:  # on disk and no longer in transit, as one step
                if written and self._current is not None:
                    self._current.size += written
                self._writing -= 1

    def read_batch(self, max_lines: int) -> tuple[SpillSegment, list[bytes]] | None:
        """Up to `max_lines` records from the oldest segment, or None when nothing is spilled."""
        while True:
            with self._io_lock:
                if not self._readable:
                    self._write_chunk()
                with self._lock:
                    current = self._current
                    if not self._readable and current is not None and current.size:
                        # Writes move on to a new segment; this one is now complete.
                        self._readable.append(current)
                        self._current = None
                    if not self._readable:
                        return None
                    segment = self._readable[0]
            lines = self._read_lines(segment, max_lines)
            if segment.exhausted:
                with self._lock:
                    self._readable.popleft()
            if lines:
                segment.outstanding += 1
                return segment, lines
            self._delete_if_done(segment)

    def release(self, segment: SpillSegment) -> None:
        """A batch read from `segment` was acknowledged."""
        segment.outstanding -= 1
        self._delete_if_done(segment)

    def adopt_orphans(self) -> int:
        """Take over this service's segments nobody holds; returns how many were adopted.

        Only segments with this store's prefix (its service): the log intake stamps every
        record with the service whose key sent it, so another service's records sent by
        this one would be stored under this service's name (services share the spill
        folder under `keelson up`).
        """
        try:
            paths = sorted(self.directory.glob(f"{self.prefix}.*.jsonl"), key=_mtime)
        except OSError:
            return 0
        adopted = 0
        for path in paths:
            segment = _lock_orphan(path)
            if segment is None:
                continue
            with self._lock:
                self._readable.append(segment)
                self._owned.add(segment)
                self._bytes += segment.size
            adopted += 1
        return adopted

    def close(self) -> None:
        """Release every segment; unsent records stay on disk for the next shipper."""
        with self._io_lock:
            self._write_chunk()
            with self._lock:
                segments = list(self._owned)
                self._owned.clear()
                self._readable.clear()
                self._current = None
        for segment in segments:
            segment.close()

    def forget(self) -> None:
        """Drop references without touching files: for a forked child, whose parent owns them."""
        self._lock = threading.Lock()
        self._io_lock = threading.Lock()
        self._readable = deque()
        self._owned = set()
        self._chunk = []
        self._chunk_bytes = 0
        self._writing = 0
        self._current = None
        self._bytes = 0

    def _open_segment(self) -> SpillSegment:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._sequence += 1
        name = f"{self.prefix}.{os.getpid()}.{self._sequence}.{uuid.uuid4().hex[:8]}.jsonl"
        path = self.directory / name
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        segment = SpillSegment(path=path, fd=fd)
        with self._lock:
            self._owned.add(segment)
        return segment

    @staticmethod
    def _read_lines(segment: SpillSegment, max_lines: int) -> list[bytes]:
        if segment.reader is None:
            segment.reader = open(segment.path, "rb")  # noqa: SIM115 - kept open across batches
        lines: list[bytes] = []
        while len(lines) < max_lines:
            line = segment.reader.readline()
            if not line:
                segment.exhausted = True
                break
            line = line.rstrip(b"\n")
            if line:
                lines.append(line)
        return lines

    def _delete_if_done(self, segment: SpillSegment) -> None:
        if not segment.exhausted or segment.outstanding > 0 or segment.closed:
            return
        segment.path.unlink(missing_ok=True)
        segment.close()
        with self._lock:
            self._owned.discard(segment)
            self._bytes -= segment.size


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _lock_orphan(path: Path) -> SpillSegment | None:
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Another adopter may have finished and unlinked it between our open and our lock.
        if os.stat(path).st_ino != os.fstat(fd).st_ino:
            raise FileNotFoundError(path)
    except OSError:
        os.close(fd)
        return None
    return SpillSegment(path=path, fd=fd, size=os.fstat(fd).st_size)

"""A steady background load through the gateway, each request with its own request id, and
the figures a fault case reports: requests during the fault, errors by status, max latency,
recovery time, and the access records the log store holds for them."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx

# Under the gateway's default limit of 600 requests a minute per client.
DEFAULT_RATE = 6.0

Call = Callable[[httpx.Client, dict[str, str]], httpx.Response]


@dataclass(frozen=True)
class Outcome:
    request_id: str
    kind: str
    started: float  # time.monotonic()
    seconds: float
    status: int | None  # None: no answer (connection refused or reset, client timeout)
    problem: bool  # the answer was application/problem+json
    error: str | None = None  # the client's exception when there was no answer

    @property
    def ok(self) -> bool:
        return self.status is not None and self.status < 400


@dataclass
class Load:
    """`calls` in turn, `rate` a second, from a thread, until `stop`."""

    base_url: str
    calls: Mapping[str, Call]
    rate: float = DEFAULT_RATE
    timeout: float = 15.0
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Load:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(self.timeout + 5)

    def _run(self) -> None:
        kinds = list(self.calls.items())
        with httpx.Client(base_url=self.base_url, timeout=self.timeout) as client:
            n = 0
            while not self._stop.is_set():
                kind, call = kinds[n % len(kinds)]
                n += 1
                request_id = f"fault-{uuid.uuid4().hex}"
                started = time.monotonic()
                try:
                    response = call(client, {"X-Request-ID": request_id})
                except httpx.HTTPError as exc:
                    status, problem, error = None, False, type(exc).__name__
                else:
                    status, error = response.status_code, None
                    problem = response.headers.get("content-type") == "application/problem+json"
                seconds = time.monotonic() - started
                self.outcomes.append(
                    Outcome(request_id, kind, started, seconds, status, problem, error)
                )
                self._stop.wait(max(0.0, 1 / self.rate - seconds))

    def between(self, start: float, end: float) -> list[Outcome]:
        return [o for o in self.outcomes if start <= o.started <= end]


@dataclass(frozen=True)
class Figures:
    requests: int
    by_status: dict[str, int]
    max_latency: float
    recovery: float | None  # seconds from the fault's end to the first success after it

    def row(self) -> str:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(self.by_status.items()))
        recovery = "-" if self.recovery is None else f"{self.recovery:.1f} s"
        return (
            f"{self.requests} requests ({statuses}), max latency {self.max_latency:.2f} s, "
            f"recovery {recovery}"
        )


def figures(
    outcomes: Iterable[Outcome], start: float, end: float, *, kind: str | None = None
) -> Figures:
    """The requests sent between `start` and `end` (the fault), and the recovery: seconds
    from `end` to the first success (of `kind`, if given) sent after it."""
    chosen = list(outcomes)
    during = [o for o in chosen if start <= o.started <= end]
    by_status = Counter("no answer" if o.status is None else str(o.status) for o in during)
    after = [
        o.started + o.seconds
        for o in chosen
        if o.ok and o.started >= end and (kind is None or o.kind == kind)
    ]
    return Figures(
        requests=len(during),
        by_status=dict(by_status),
        max_latency=max((o.seconds for o in during), default=0.0),
        recovery=(min(after) - end) if after else None,
    )


def access_records(database_url: str, request_ids: Iterable[str]) -> dict[str, Counter[str]]:
    """Per request id, how many access records each service stored."""
    ids = list(request_ids)

    async def query() -> list[Any]:
        conn = await asyncpg.connect(database_url, timeout=10)
        try:
            return list(
                await conn.fetch(
                    "SELECT request_id, service, count(*) AS n FROM logs.records "
                    "WHERE request_id = ANY($1::text[]) "
                    "AND logger IN ('keelson.access', 'gateway.access') "
                    "GROUP BY request_id, service",
                    ids,
                )
            )
        finally:
            await conn.close()

    found: dict[str, Counter[str]] = {i: Counter() for i in ids}
    for row in asyncio.run(query()):
        found[row["request_id"]][row["service"]] = row["n"]
    return found


def report(name: str, **values: Any) -> None:
    """One line the fault case prints (pytest -s shows it; docs/reliability.md quotes it)."""
    print(f"\nFAULT {name}: " + "; ".join(f"{k}={v}" for k, v in values.items()), flush=True)

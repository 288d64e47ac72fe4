"""`keelson logs tail`: the log service's live tail in the terminal, in colour."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any, TextIO

import httpx
import orjson

from keelson.logging import TextFormatter

__all__ = ["format_record", "register", "sse_records"]

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_RECONNECT_MAX_SECONDS = 10.0


class _Unrecoverable(Exception):
    """The server answered with an error that retrying will not fix (401, 403, 404, 422)."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    logs = subparsers.add_parser("logs", help="read the log service")
    commands = logs.add_subparsers(dest="logs_command", required=True)
    tail = commands.add_parser(
        "tail",
        help="print new log records as they arrive",
        description="Follow the log service's live tail (Server-Sent Events), reconnecting "
        "when the connection drops. Needs an access token of an admin or ops user.",
    )
    tail.add_argument(
        "--url",
        default=os.environ.get("KEELSON_URL", "http://127.0.0.1:8000"),
        help="the gateway (or the log service itself); env KEELSON_URL",
    )
    tail.add_argument("--service", help="only this service's records")
    tail.add_argument("--level", choices=_LEVELS, type=str.upper, help="this level and above")
    tail.add_argument(
        "--token",
        default=os.environ.get("KEELSON_TOKEN"),
        help="access token (env KEELSON_TOKEN)",
    )
    tail.add_argument("--max", type=int, help="exit after this many records")
    tail.add_argument(
        "--colour",
        "--color",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="colour the output (default: when it is a terminal and NO_COLOR is unset)",
    )
    tail.set_defaults(func=tail_logs)


def tail_logs(args: argparse.Namespace) -> int:
    colour = args.colour
    if colour is None:
        colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    params = {k: v for k, v in (("service", args.service), ("level", args.level)) if v}
    headers = {"Accept": "text/event-stream"}
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    url = args.url.rstrip("/") + "/api/v1/logs/tail"
    try:
        follow(url, params, headers, colour=colour, limit=args.max, out=sys.stdout)
    except _Unrecoverable as exc:
        print(f"keelson logs tail: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def follow(
    url: str,
    params: dict[str, str],
    headers: dict[str, str],
    *,
    colour: bool,
    limit: int | None,
    out: TextIO,
) -> None:
    """Print records until `limit` are printed; reconnect with backoff when the link drops."""
    printed = 0
    delay = 0.5
    formatters: dict[str, TextFormatter] = {}
    timeout = httpx.Timeout(10.0, read=None)
    with httpx.Client(timeout=timeout) as client:
        while limit is None or printed < limit:
            try:
                with client.stream("GET", url, params=params, headers=headers) as response:
                    if response.status_code in (401, 403, 404, 422):
                        response.read()
                        raise _Unrecoverable(_problem(response))
                    response.raise_for_status()
                    delay = 0.5
                    for record in sse_records(response.iter_lines()):
                        print(format_record(record, colour, formatters), file=out, flush=True)
                        printed += 1
                        if limit is not None and printed >= limit:
                            return
            except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                print(f"keelson logs tail: {exc}; reconnecting", file=sys.stderr)
            time.sleep(delay)
            delay = min(delay * 2, _RECONNECT_MAX_SECONDS)


def sse_records(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The `log` events of a Server-Sent Events stream, decoded."""
    event, data = "message", list[str]()
    for line in lines:
        if not line:
            if data and event == "log":
                yield orjson.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))


def format_record(
    record: dict[str, Any], colour: bool, formatters: dict[str, TextFormatter] | None = None
) -> str:
    """One record as the services print theirs: `[service] HH:MM:SS LEVEL logger: message`."""
    formatters = {} if formatters is None else formatters
    service = str(record.get("service", "?"))
    formatter = formatters.get(service)
    if formatter is None:
        formatter = formatters[service] = TextFormatter(service, colour=colour)
    level = str(record.get("level", "INFO"))
    log_record = logging.LogRecord(
        str(record.get("logger", "")),
        logging.getLevelName(level) if level in _LEVELS else logging.INFO,
        "",
        0,
        str(record.get("message", "")),
        None,
        None,
    )
    built: dict[str, Any] = {"attrs": {}, "request_id": None, "user_id": None, **record}
    built.update(ts=_epoch(record.get("ts")), level=level)
    # TextFormatter reads the record's already-built dict (see keelson.logging._format).
    log_record.keelson = built
    return formatter.format(log_record)


def _epoch(value: Any) -> float:
    if isinstance(value, int | float):
        return float(value)
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return time.time()


def _problem(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    return f"HTTP {response.status_code}: {body.get('detail') or body.get('title')}"

import time
import uuid

import orjson
import pytest

from logs_service.records import LogRow, Rejection, parse_line, row_to_dict
from logs_service.schemas import LogRecordPublic

NOW = time.time()


def wire(**changes: object) -> bytes:
    record = {
        "id": uuid.uuid4().hex,
        "ts": NOW,
        "service": "auth",
        "level": "INFO",
        "logger": "auth.tokens",
        "message": "token issued",
        "request_id": "r-1",
        "trace_id": None,
        "user_id": "u-1",
        "attrs": {"client": "web"},
    }
    record.update(changes)
    return orjson.dumps({k: v for k, v in record.items() if v is not ...})


def parse(line: bytes) -> LogRow | Rejection:
    return parse_line(line, max_bytes=4096, oldest=NOW - 86400, newest=NOW + 86400)


def test_a_valid_record_becomes_a_row() -> None:
    row = parse(wire(level="warning"))
    assert isinstance(row, LogRow)
    assert row.level == 30 and row.service == "auth" and row.user_id == "u-1"
    assert abs(row.ts.timestamp() - NOW) < 1e-5
    assert orjson.loads(row.attrs) == {"client": "web"}


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"not json at all", Rejection.NOT_JSON),
        (b"[1, 2, 3]", Rejection.INVALID),
        (wire(id="not-a-uuid"), Rejection.INVALID),
        (wire(id=...), Rejection.INVALID),
        (wire(ts="yesterday"), Rejection.INVALID),
        (wire(ts=True), Rejection.INVALID),
        (wire(level="LOUD"), Rejection.INVALID),
        (wire(service=""), Rejection.INVALID),
        (wire(service="s" * 500), Rejection.INVALID),
        (wire(message=None), Rejection.INVALID),
        (wire(attrs=[1]), Rejection.INVALID),
        (wire(request_id=12), Rejection.INVALID),
        (wire(ts=NOW - 10 * 86400), Rejection.OUT_OF_RANGE),
        (wire(message="x" * 5000), Rejection.OVERSIZED),
    ],
)
def test_bad_records_are_refused_with_a_reason(line: bytes, reason: Rejection) -> None:
    assert parse(line) == reason


def test_nul_characters_are_removed_since_postgres_cannot_store_them() -> None:
    row = parse(wire(message="a\x00b", attrs={"k\x00": "v\x00"}))
    assert isinstance(row, LogRow)
    assert row.message == "ab" and orjson.loads(row.attrs) == {"k": "v"}


def test_timestamps_compare_as_strings_in_time_order() -> None:
    """A whole second keeps its fraction: pydantic alone writes "...:05Z" (after "...:05.5Z"),
    isoformat "...:05+00:00"."""
    whole = int(NOW)
    times = [whole - 0.5, whole, whole + 0.000001, whole + 0.5]
    rendered = []
    for ts in times:
        row = parse(wire(ts=ts))
        assert isinstance(row, LogRow)
        api = orjson.loads(LogRecordPublic.from_row(row).model_dump_json())["ts"]
        assert row_to_dict(row)["ts"] == api  # the live tail writes what the API does
        rendered.append(api)
    assert sorted(rendered) == rendered and len(set(map(len, rendered))) == 1
    assert rendered[1].endswith(".000000Z")


def test_a_record_from_the_future_is_stored_at_the_bound_with_its_claim() -> None:
    row = parse(wire(ts=NOW + 10 * 86400))
    assert isinstance(row, LogRow)
    assert row.ts.timestamp() == pytest.approx(NOW + 86400, abs=1e-5)
    assert orjson.loads(row.attrs)["claimed_ts"] == NOW + 10 * 86400

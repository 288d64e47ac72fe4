import uuid
from datetime import UTC, datetime

import pytest

from keelson.errors import BadRequest, ServiceUnavailable
from keelson_dev.embedded import free_port
from logs_service.queries import Cursor, count_records, search_records
from logs_service.store import create_pool


def test_cursors_round_trip_to_the_microsecond() -> None:
    cursor = Cursor(datetime(2026, 11, 23, 20, 1, 2, 345678, tzinfo=UTC), uuid.uuid4())
    assert Cursor.decode(cursor.encode()) == cursor


@pytest.mark.parametrize("text", ["", "garbage!", "MTIz", "bm90LmEtdXVpZA"])
def test_a_cursor_not_from_the_api_is_a_bad_request(text: str) -> None:
    with pytest.raises(BadRequest):
        Cursor.decode(text)


async def test_a_store_that_is_away_answers_503() -> None:
    pool = await create_pool(
        f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", schema="logs", max_size=1
    )
    try:
        with pytest.raises(ServiceUnavailable):
            await search_records(pool, limit=10)
        with pytest.raises(ServiceUnavailable):
            await count_records(pool, since=datetime.now(UTC))
    finally:
        await pool.close()

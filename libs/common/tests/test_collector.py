import gc
from collections.abc import Iterator

import pytest

from keelson.collector import YOUNG_THRESHOLD, tune_collector


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_collector")
def test_start_up_objects_are_frozen_and_the_young_generation_runs_less_often() -> None:
    gc.unfreeze()
    built_at_start = [[] for _ in range(10)]  # containers the collector tracks
    assert any(o is built_at_start for o in gc.get_objects())

    tune_collector()

    assert gc.get_threshold()[0] == YOUNG_THRESHOLD
    assert gc.get_freeze_count() >= len(built_at_start)
    # Frozen: in no generation the collector walks.
    assert not any(o is built_at_start for o in gc.get_objects())

"""The collector's settings for processes of many long-lived objects (the scheduler, the bench's swarms)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from hodei._collector import tune_for_long_lived_objects


@pytest.fixture
def collector_restored() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("collector_restored")
def test_start_up_objects_are_frozen_and_young_ones_collected_less_often() -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0

    tune_for_long_lived_objects()

    assert gc.get_threshold() == (50_000, 20, 100)
    # Every object tracked at that moment moved to the permanent generation, which no collection walks.
    assert gc.get_freeze_count() > 0
    assert len(gc.get_objects()) < gc.get_freeze_count()

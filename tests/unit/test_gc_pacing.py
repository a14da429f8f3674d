"""A download paces the garbage collector for itself and gives the process its settings back."""

from __future__ import annotations

import gc

import pytest

from flowdc.download import fewer_collections


def test_collections_are_fewer_during_a_download_and_restored_after() -> None:
    before = gc.get_threshold()
    with fewer_collections():
        assert gc.get_threshold()[0] >= 10 * before[0]
        assert gc.get_freeze_count() > 0  # what existed before the run is left out of scans
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_settings_are_restored_when_the_download_fails() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), fewer_collections():
        raise RuntimeError("boom")
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0

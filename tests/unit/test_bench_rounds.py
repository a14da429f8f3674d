"""The bench's rounds: contenders rotate, so none is always first or always after the same one."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from run import round_order  # noqa: E402


def test_the_first_two_rounds_run_in_opposite_orders() -> None:
    assert [round_order(["flowdc", "baseline"], i) for i in range(2)] == [["flowdc", "baseline"],
                                                                          ["baseline", "flowdc"]]


@pytest.mark.parametrize("count", [2, 3, 4])
def test_every_contender_runs_every_round_and_each_opens_as_many(count: int) -> None:
    names = ["flowdc", "flowdc_wds", "baseline", "bare"][:count]
    rounds = [round_order(names, i) for i in range(2 * count)]
    assert all(sorted(r) == sorted(names) for r in rounds)
    assert Counter(r[0] for r in rounds) == dict.fromkeys(names, 2)


def test_a_contender_follows_a_different_one_from_round_to_round() -> None:
    names = ["flowdc", "baseline", "bare"]
    before_baseline = {r[r.index("baseline") - 1] if r.index("baseline") else None
                       for r in (round_order(names, i) for i in range(3))}
    assert len(before_baseline) == 3  # after flowdc, first, after bare


def test_no_contenders_no_round() -> None:
    assert round_order([], 2) == []

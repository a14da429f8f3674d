"""The bench's plan: contenders rotate through the rounds (none is always first or always after the same
one), a scenario's rows that cannot succeed are counted out, and each contender's CPU is its own."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from run import RunResult, _cpu_seconds, pick_rounds, ratio_lines, round_order  # noqa: E402
from scenarios import (  # noqa: E402
    DEAD_HOSTS,
    QUOTA,
    RESET_HOSTS,
    SCENARIOS,
    Scenario,
    answers_nothing,
    build_urls,
    host_hold,
    host_makespan,
    host_rate,
)


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


@pytest.mark.parametrize("scenario", [DEAD_HOSTS, RESET_HOSTS], ids=["silent", "resetting"])
def test_the_rows_of_a_host_that_answers_nothing_are_counted_out(scenario: Scenario) -> None:
    silent = [i for i, spec in enumerate(scenario.hosts) if answers_nothing(spec)]
    assert len(silent) == 2
    bases = [f"http://127.0.0.{i + 2}:1" for i in range(len(scenario.hosts))]
    _, counts, expected_ok = build_urls(scenario, bases, 600)
    assert expected_ok == 600 - sum(counts[i] for i in silent) == 400


def test_a_childs_cpu_is_counted_once_it_finished() -> None:
    _, before = _cpu_seconds()
    burn = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
    subprocess.run([sys.executable, "-c", burn], check=True)
    assert _cpu_seconds()[1] - before >= 0.3


def test_cpu_per_image_is_compared_with_the_bare_loops() -> None:
    flowdc = RunResult("flowdc", ok=1000, wall_s=2.0, cpu_s=3.0)
    bare = RunResult("bare", ok=2000, wall_s=1.0, cpu_s=2.0)
    lines = ratio_lines(SCENARIOS["realistic"], [flowdc, bare])
    assert "flowdc / bare, CPU per image: 3.00x (3000 against 1000 us)" in lines


def test_ratios_are_also_taken_round_by_round() -> None:
    """A slow stretch slows both runs of its round: the round's ratio keeps the pace between them,
    while the ratio of the two medians compares rounds that met different stretches."""
    runs = []
    for flowdc_s, bare_s in ((5.0, 4.0), (8.0, 6.4), (6.0, 6.25)):
        runs += [RunResult("flowdc", ok=20_000, wall_s=flowdc_s), RunResult("bare", ok=20_000, wall_s=bare_s)]
    picked = pick_rounds(runs, 3, "median")
    assert [r.round_rates for r in picked] == [[4000.0, 2500.0, 20_000 / 6.0], [5000.0, 3125.0, 3200.0]]
    lines = ratio_lines(SCENARIOS["realistic"], picked)
    assert "flowdc / bare, images/s (wall clock): 1.04x" in lines  # the medians: 6.0 s and 6.25 s
    assert "flowdc / bare, images/s round by round: median 0.80x (0.80, 0.80, 1.04)" in lines
    one_round = pick_rounds(runs[:2], 1)
    assert not any("round by round" in line for line in ratio_lines(SCENARIOS["realistic"], one_round))


def test_a_quota_hosts_ideal_serves_a_window_at_once_and_holds_only_when_it_says_nothing() -> None:
    """50 a second in fixed windows: 500 rows take the first window's 50 at once and 9 s more;
    finding a quota that says nothing costs a refusal's wait (up to a window), one that announces
    itself costs none."""
    announced, _, silent, _ = QUOTA.hosts
    assert host_rate(silent) == 50.0
    assert host_makespan(silent, 500) == pytest.approx(9.0 + 0.02)
    assert (host_hold(announced), host_hold(silent)) == (0.0, 1.0)

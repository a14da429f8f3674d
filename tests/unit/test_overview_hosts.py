"""overview.per_host: each host's rows, ok, bytes and median time to first byte, busiest first."""

from __future__ import annotations

import statistics

import numpy as np
import pyarrow as pa
import pytest

from flowdc.overview import MAX_HOSTS_LISTED, HostGroups, long_pole, per_host, summary_text


def _table(rng: np.random.Generator, rows: int, hosts: int, as_dictionary: bool) -> pa.Table:
    names = [f"h{i}.example:80" for i in range(hosts)]
    host = [names[i] if rng.random() > 0.05 else None for i in rng.integers(0, hosts, rows)]
    status = rng.choice(["ok", "ok", "ok", "failed", "skipped"], rows).tolist()
    size = [int(b) if rng.random() > 0.1 else None for b in rng.integers(0, 50_000, rows)]
    ttfb = [float(t) if rng.random() > 0.2 else None for t in rng.gamma(2.0, 20.0, rows).round(3)]
    host_array = pa.array(host, pa.string())
    if as_dictionary:
        host_array = host_array.dictionary_encode()
    return pa.table({"host": host_array, "status": status, "bytes": pa.array(size, pa.int64()),
                     "ttfb_ms": pa.array(ttfb, pa.float64()), "row": np.arange(rows)})


def _expected(table: pa.Table) -> dict[str, dict]:
    by: dict[str, list[dict]] = {}
    for rec in table.to_pylist():
        if rec["host"] is not None:
            by.setdefault(rec["host"], []).append(rec)
    out = {}
    for name, recs in by.items():
        ttfbs = [r["ttfb_ms"] for r in recs if r["ttfb_ms"] is not None]
        out[name] = {"rows": len(recs), "ok": sum(r["status"] == "ok" for r in recs),
                     "bytes": sum(r["bytes"] or 0 for r in recs if r["status"] == "ok"),  # bytes stored
                     "ttfb_median_ms": round(statistics.median(ttfbs), 2) if ttfbs else None}
    return out


@pytest.mark.parametrize(("seed", "as_dictionary"), [(1, False), (2, True), (3, True)])
def test_figures_per_host_match_a_count_by_hand(seed: int, as_dictionary: bool) -> None:
    table = _table(np.random.default_rng(seed), 3000, 40, as_dictionary)
    hosts = per_host(HostGroups.of(table), {"h3.example:80": {"limit": 8}})
    expected = _expected(table)
    assert {name: {k: v for k, v in f.items() if k != "controller"} for name, f in hosts.items()} == expected
    assert [f["rows"] for f in hosts.values()] == sorted((f["rows"] for f in hosts.values()), reverse=True)
    assert hosts["h3.example:80"]["controller"] == {"limit": 8}


def test_a_host_without_any_time_to_first_byte_and_the_listing_cap() -> None:
    n = MAX_HOSTS_LISTED + 5
    table = pa.table({"host": [f"h{i}" for i in range(n)], "status": ["failed"] * n, "bytes": pa.nulls(n, pa.int64()),
                      "ttfb_ms": pa.nulls(n, pa.float64()), "row": range(n)})
    hosts = per_host(HostGroups.of(table), {})
    assert len(hosts) == MAX_HOSTS_LISTED
    assert hosts["h0"] == {"rows": 1, "ok": 0, "bytes": 0, "ttfb_median_ms": None}
    assert per_host(HostGroups.of(table.slice(0, 0)), {}) == {}


START = 1_800_000_000.0


def _timed(hosts_and_ends: list[tuple[str, float]]) -> pa.Table:
    """One ok row per (host, seconds after START its record was made)."""
    n = len(hosts_and_ends)
    return pa.table({"host": [h for h, _ in hosts_and_ends], "status": ["ok"] * n,
                     "bytes": pa.array([10] * n, pa.int64()), "ttfb_ms": pa.array([5.0] * n, pa.float64()),
                     "row": range(n), "ts": [START + t for _, t in hosts_and_ends]})


def test_each_host_is_done_at_the_last_row_this_run_recorded() -> None:
    table = _timed([("a", 3.0), ("a", 9.5), ("b", 1.0), ("c", -50.0)])  # c's row was done by an earlier run
    hosts = per_host(HostGroups.of(table, START), {})
    assert {name: f["done_s"] for name, f in hosts.items()} == {"a": 9.5, "b": 1.0, "c": None}
    assert "done_s" not in per_host(HostGroups.of(table), {})["a"]  # without the run's start, no such figure


@pytest.mark.parametrize(("ends", "elapsed", "pole"), [
    # 40 s after every other host, in a 60-s run: its own limits set the end.
    ([("slow", 60.0), ("a", 20.0), ("b", 18.0)], 60.0, {"host": "slow", "done_s": 60.0, "after_every_other_s": 40.0}),
    # 4 s after the next: under LONG_POLE_MIN_S.
    ([("slow", 14.0), ("a", 10.0)], 14.0, None),
    # 8 s after the next, but a tenth of a 90-s run: under LONG_POLE_SHARE.
    ([("slow", 90.0), ("a", 82.0)], 90.0, None),
    # Two hosts late together: neither alone set the end.
    ([("slow", 60.0), ("slower", 61.0), ("a", 10.0)], 61.0, None),
    # One host: nothing to compare with; another recorded nothing this run.
    ([("slow", 60.0)], 60.0, None),
    ([("slow", 60.0), ("old", -5.0)], 60.0, None),
])
def test_the_long_pole_is_one_host_done_long_after_every_other(ends: list[tuple[str, float]], elapsed: float,
                                                               pole: dict | None) -> None:
    assert long_pole(HostGroups.of(_timed(ends), START), elapsed) == pole


def test_the_summary_names_the_long_pole_and_what_held_it() -> None:
    table = _timed([("slow.example", 60.0), ("a.example", 20.0)])
    groups = HostGroups.of(table, START)
    hosts = per_host(groups, {"slow.example": {"pace_per_s": 2.0, "n_429_503": 14}})
    overview = {"totals": {"ok": 2, "rows": 2, "failed": 0, "skipped": 0}, "success_rate": 1.0,
                "this_run": {"ok": 2, "failed": 0, "skipped": 0, "already_done": 0, "retries": 0, "bytes": 20},
                "elapsed_s": 60.0, "images_per_s": 0.03, "mb_per_s": 0.0, "errors": {}, "hosts": hosts,
                "long_pole": long_pole(groups, 60.0)}
    text = summary_text(overview, "out")
    assert ("  slow.example was done 40 s after every other host (paced at 2.0/s, 14 refusals (429/503)): its own "
            "limits set the run's end, which more machines would not bring sooner") in text.splitlines()
    overview["long_pole"] = None
    assert "after every other host" not in summary_text(overview, "out")

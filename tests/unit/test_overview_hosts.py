"""overview.per_host: each host's rows, ok, bytes and median time to first byte, busiest first."""

from __future__ import annotations

import statistics

import numpy as np
import pyarrow as pa
import pytest

from flowdc.overview import MAX_HOSTS_LISTED, per_host


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
                     "bytes": sum(r["bytes"] or 0 for r in recs),
                     "ttfb_median_ms": round(statistics.median(ttfbs), 2) if ttfbs else None}
    return out


@pytest.mark.parametrize(("seed", "as_dictionary"), [(1, False), (2, True), (3, True)])
def test_figures_per_host_match_a_count_by_hand(seed: int, as_dictionary: bool) -> None:
    table = _table(np.random.default_rng(seed), 3000, 40, as_dictionary)
    hosts = per_host(table, {"h3.example:80": {"limit": 8}})
    expected = _expected(table)
    assert {name: {k: v for k, v in f.items() if k != "controller"} for name, f in hosts.items()} == expected
    assert [f["rows"] for f in hosts.values()] == sorted((f["rows"] for f in hosts.values()), reverse=True)
    assert hosts["h3.example:80"]["controller"] == {"limit": 8}


def test_a_host_without_any_time_to_first_byte_and_the_listing_cap() -> None:
    n = MAX_HOSTS_LISTED + 5
    table = pa.table({"host": [f"h{i}" for i in range(n)], "status": ["failed"] * n, "bytes": pa.nulls(n, pa.int64()),
                      "ttfb_ms": pa.nulls(n, pa.float64()), "row": range(n)})
    hosts = per_host(table, {})
    assert len(hosts) == MAX_HOSTS_LISTED
    assert hosts["h0"] == {"rows": 1, "ok": 0, "bytes": 0, "ttfb_median_ms": None}
    assert per_host(table.slice(0, 0), {}) == {}

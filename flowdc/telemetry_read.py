"""Reading a telemetry log and summarizing it per host, with no plotting (report.py draws).

A log is JSON lines (see docs/telemetry.md): a local file, or on any fsspec URL a file or a folder
of parts (what a download writes where the store cannot append). Lines of either format are read:
old files hold host lines without a "kind"; newer ones mix in run lines, which are skipped here.

A log can be tens of MB, so it is streamed twice instead of loaded whole: a first pass keeps a few
running totals per host (`summarize`), which picks the busiest hosts; a second pass keeps the time
series of just those hosts (`load_series`). Memory is then bounded by those hosts.
"""

from __future__ import annotations

import json
import math
import os
from array import array
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flowdc.errors import ConfigError
from flowdc.telemetry import is_host_line

COUNTERS = ("requests", "ok", "n_429_503", "n_5xx", "n_timeouts")
SERIES = ("limit", "inflight", "p50_ms", "p95_ms", "base_lat_ms", "goodput")


class TelemetrySource:
    """Where a log is: its files in the order they were written (one, or a folder's parts by name)."""

    def __init__(self, location: str | Path, storage_options: Mapping[str, Any] | None = None) -> None:
        loc = str(location)
        self.display = loc
        self.name = loc.rstrip("/").rsplit("/", 1)[-1]
        self.remote = "://" in loc and not loc.startswith("file://")
        if self.remote:
            from fsspec.core import url_to_fs

            try:
                self.fs, root = url_to_fs(loc, **dict(storage_options or {}))
                self.files = self._files(root)
            except (ImportError, ValueError, OSError) as exc:
                raise ConfigError(f"cannot read the telemetry at {loc}: {type(exc).__name__}: {exc}") from None
        else:
            self.fs = None
            root = os.path.abspath(loc.removeprefix("file://"))
            self.local_path = Path(root)
            self.files = self._files(root)

    def _files(self, root: str) -> list[str]:
        isfile, isdir = ((self.fs.isfile, self.fs.isdir) if self.fs is not None else (os.path.isfile, os.path.isdir))
        if isfile(root):
            return [root]
        if isdir(root):
            found = self.fs.find(root) if self.fs is not None else [str(p) for p in Path(root).rglob("*")]
            parts = sorted(p for p in found if p.endswith(".jsonl") and not p.rsplit("/", 1)[-1].startswith("."))
            if parts:
                return parts
            raise ConfigError(f"no telemetry parts (*.jsonl) in {self.display}")
        raise ConfigError(f"telemetry file not found: {self.display}")

    def lines(self) -> Iterator[str]:
        for name in self.files:
            # errors="replace": a binary file then fails as "not JSON" instead of a UnicodeDecodeError.
            if self.fs is None:
                fh = open(name, encoding="utf-8", errors="replace")  # noqa: SIM115
            else:
                fh = self.fs.open(name, "rt", encoding="utf-8", errors="replace")
            with fh:
                yield from fh


def source_of(where: str | Path | TelemetrySource) -> TelemetrySource:
    return where if isinstance(where, TelemetrySource) else TelemetrySource(where)


# -- reading --------------------------------------------------------------------------------------
@dataclass
class ReadStats:
    """What the reader had to step over; shown in the figure so a reader knows the data is partial."""

    skipped: int = 0  # malformed lines in the middle of the file
    truncated_tail: bool = False  # last line cut short: the run was killed mid-write


def records(src: TelemetrySource, stats: ReadStats, *, allow_empty: bool = False) -> Iterator[dict[str, Any]]:
    """Yield host snapshot records one at a time; ConfigError if the log is not telemetry, or
    holds no host snapshot unless allow_empty (a run shorter than one snapshot interval)."""
    seen = 0
    pending_bad = False  # a bad line only counts as "truncated" if nothing follows it
    for lineno, line in enumerate(src.lines(), 1):  # every file of the log, in order
        if not line.strip():
            continue
        if pending_bad:
            stats.skipped += 1
            pending_bad = False
        record = _parse(line)
        if record is RUN_LINE:
            continue  # a run's counters: nothing to plot per host
        if record is None:
            if seen == 0 and line.endswith("\n"):
                raise ConfigError(f"{src.display} is not a flowdc telemetry JSONL file "
                                  f"(line {lineno} is not a snapshot)")
            pending_bad = True
            continue
        seen += 1
        yield record
    if pending_bad:
        stats.truncated_tail = True
    if seen == 0 and not allow_empty:
        raise ConfigError(f"telemetry file has no snapshots: {src.display}")


RUN_LINE: dict[str, Any] = {}  # _parse's answer for a run line (kind "run"): valid, not a host's


def _parse(line: str) -> dict[str, Any] | None:
    """A host line as a dict (files from before "kind" hold only host lines), RUN_LINE, or None."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if isinstance(record, dict) and record.get("kind") == "run":
        return RUN_LINE
    return record if isinstance(record, dict) and is_host_line(record) else None


def _num(value: Any) -> float:
    """A figure as float; NaN when missing or null (PAARC has no latency before its first interval)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return math.nan


def _counter_step(prev: float, value: float, restarted: bool) -> float:
    """Increase of a cumulative counter. Counters restart from 0 when a resumed run appends to the
    same file or an idle host is forgotten and recreated; then the whole new value is new."""
    if math.isnan(value):
        return 0.0
    if restarted or math.isnan(prev) or value < prev:
        return value
    return value - prev


def _restarted(prev: dict[str, float], rec: dict[str, Any]) -> bool:
    """A host's counters restarted if its request count went down. Judged on `requests` for all
    counters at once: a rare counter (5xx) can sit at the same value across a restart."""
    return _num(rec.get("requests")) < prev["requests"]  # False while either is NaN


GAUGES = ("limit", "inflight", "goodput")  # a host's figure is the sum over its live downloads
LIVE_S = 1.5  # a download's last gauges count toward its host's this long: three snapshot ticks


def _nansum(values: list[float]) -> float:
    known = [v for v in values if not math.isnan(v)]
    return math.fsum(known) if known else math.nan


class _HostStreams:
    """One host's downloads, each a (run_id, partition_id) stream with counters of its own.

    A host split over partitions is fetched by several downloads at once (distribute), and one
    after the other by sequential runs; each counts from 0. Read as one stream, every drop between
    two of them looked like a restart and the whole count was added again. So counters are followed
    per stream and their increases added up; the gauges are summed over the streams heard from in
    the last LIVE_S seconds, which is what the host carried then. Lines without run_id and
    partition_id (older logs) make one stream per host.
    """

    def __init__(self) -> None:
        self.last: dict[tuple[str, str], dict[str, float]] = {}
        self.gauges: dict[tuple[str, str], tuple[float, dict[str, float]]] = {}

    def step(self, rec: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
        """This line's counter increases, and the host's gauges summed over its live streams."""
        key = (str(rec.get("run_id")), str(rec.get("partition_id")))
        last = self.last.setdefault(key, dict.fromkeys(COUNTERS, math.nan))
        restarted = _restarted(last, rec)
        increases: dict[str, float] = {}
        for name in COUNTERS:
            value = _num(rec.get(name))
            increases[name] = _counter_step(last[name], value, restarted)
            if not math.isnan(value):
                last[name] = value
        t = float(rec["t"])
        self.gauges[key] = (t, {name: _num(rec.get(name)) for name in GAUGES})
        for gone in [k for k, (seen, _) in self.gauges.items() if seen < t - LIVE_S]:
            del self.gauges[gone]  # bounded by the streams live at once, not by all there were
        live = [g for _, g in self.gauges.values()]
        return increases, {name: _nansum([g[name] for g in live]) for name in GAUGES}


# -- summary (pass 1) -----------------------------------------------------------------------------
@dataclass
class _HostTotals:
    snapshots: int = 0
    first_t: float = math.inf
    last_t: float = -math.inf
    final_limit: float = math.nan
    max_limit: float = math.nan
    final_state: str | None = None
    inflight_sum: float = 0.0
    inflight_n: int = 0
    p50s: array[float] = field(default_factory=lambda: array("d"))  # 8 bytes a snapshot, for the median
    streams: _HostStreams = field(default_factory=_HostStreams)
    totals: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0.0))

    def add(self, rec: dict[str, Any]) -> None:
        t = float(rec["t"])
        self.snapshots += 1
        self.first_t, self.last_t = min(self.first_t, t), max(self.last_t, t)
        increases, gauges = self.streams.step(rec)
        for key in COUNTERS:
            self.totals[key] += increases[key]
        limit = gauges["limit"]
        if not math.isnan(limit):
            self.final_limit = limit
            self.max_limit = limit if math.isnan(self.max_limit) else max(self.max_limit, limit)
        if isinstance(rec.get("state"), str):
            self.final_state = rec["state"]
        inflight = gauges["inflight"]
        if not math.isnan(inflight):
            self.inflight_sum += inflight
            self.inflight_n += 1
        p50 = _num(rec.get("p50_ms"))
        if not math.isnan(p50):
            self.p50s.append(p50)

    def as_dict(self) -> dict[str, Any]:
        return {
            **{key: int(self.totals[key]) for key in COUNTERS},
            "final_limit": _int_or_none(self.final_limit),
            "max_limit": _int_or_none(self.max_limit),
            "mean_inflight": round(self.inflight_sum / self.inflight_n, 2) if self.inflight_n else None,
            "median_p50_ms": round(float(np.median(self.p50s)), 1) if len(self.p50s) else None,
            "final_state": self.final_state,
            "snapshots": self.snapshots,
            "first_t": self.first_t,
            "last_t": self.last_t,
        }


def _int_or_none(value: float) -> int | None:
    return None if math.isnan(value) else round(value)


def summarize_with_stats(src: TelemetrySource) -> tuple[dict[str, dict[str, Any]], ReadStats]:
    stats = ReadStats()
    hosts: dict[str, _HostTotals] = {}
    for rec in records(src, stats):
        acc = hosts.get(rec["host"])
        if acc is None:
            acc = hosts[rec["host"]] = _HostTotals()
        acc.add(rec)
    ordered = sorted(hosts.items(), key=lambda kv: (-kv[1].totals["requests"], kv[0]))
    return {host: acc.as_dict() for host, acc in ordered}, stats


def summarize(where: str | Path | TelemetrySource) -> dict[str, dict[str, Any]]:
    """Per-host totals, busiest host (most requests) first.

    Each value has: requests, ok, n_429_503, n_5xx, n_timeouts (totals over the file), final_limit,
    max_limit, mean_inflight, median_p50_ms (None without PAARC), final_state, snapshots, first_t,
    last_t (unix seconds).
    """
    return summarize_with_stats(source_of(where))[0]


# -- time series (pass 2) -------------------------------------------------------------------------
@dataclass
class HostSeries:
    """One host's snapshots as numpy columns; counters are per-snapshot increases, not cumulative."""

    t: np.ndarray
    values: dict[str, np.ndarray]  # SERIES keys, NaN where missing
    deltas: dict[str, np.ndarray]  # COUNTERS keys
    covered: np.ndarray  # seconds each snapshot's increases span (since the one before)
    states: list[tuple[float, float, str]]  # (start, end, state) runs


def load_series(where: str | Path | TelemetrySource, hosts: set[str]) -> dict[str, HostSeries]:
    cols: dict[str, dict[str, array[float]]] = {h: {k: array("d") for k in ("t", *SERIES, *COUNTERS)} for h in hosts}
    states: dict[str, list[str | None]] = {h: [] for h in hosts}
    streams = {h: _HostStreams() for h in hosts}
    for rec in records(source_of(where), ReadStats()):
        host = rec["host"]
        if host not in hosts:
            continue
        c = cols[host]
        c["t"].append(float(rec["t"]))
        # In file order: a stream's lines are written in its own order, so its increases are sound
        # even where two streams' lines interleave slightly in time.
        increases, gauges = streams[host].step(rec)
        for key in SERIES:
            c[key].append(gauges[key] if key in gauges else _num(rec.get(key)))
        for key in COUNTERS:
            c[key].append(increases[key])
        state = rec.get("state")
        states[host].append(state if isinstance(state, str) else None)
    return {h: _to_series(cols[h], states[h]) for h in hosts}


def _to_series(cols: dict[str, array[float]], states: list[str | None]) -> HostSeries:
    t = np.frombuffer(cols["t"], dtype=float)
    order = np.argsort(t, kind="stable")  # two runs appending at once can interleave slightly
    t = t[order]
    values = {k: np.frombuffer(cols[k], dtype=float)[order] for k in SERIES}
    deltas = {k: np.frombuffer(cols[k], dtype=float)[order] for k in COUNTERS}
    return HostSeries(t, values, deltas, _covered(t), _state_runs(t, [states[i] for i in order]))


def _covered(t: np.ndarray) -> np.ndarray:
    """Seconds since the previous snapshot; the first one, and the first after a gap (the host was
    absent), count one usual step: their increases are what the host did since it came back."""
    step = typical_step(t)
    gaps = np.diff(t, prepend=t[0] - step) if len(t) else np.zeros(0)
    return np.where(gaps > gap_threshold(t), step, gaps)


def typical_step(t: np.ndarray) -> float:
    """Seconds between a host's snapshots (the telemetry clock ticks about every 0.5 s)."""
    return float(np.median(np.diff(t))) if len(t) > 1 else 0.5


def gap_threshold(t: np.ndarray) -> float:
    """Seconds between snapshots that mean the host was absent (idle, or between two runs)."""
    return max(3.0, 5 * typical_step(t))


def _state_runs(t: np.ndarray, states: list[str | None]) -> list[tuple[float, float, str]]:
    """Collapse per-snapshot states into (start, end, state) runs for shading; gaps stay unshaded."""
    gap, step = gap_threshold(t), typical_step(t)
    runs: list[tuple[float, float, str]] = []
    for i, state in enumerate(states):
        if state is None:
            continue
        start = float(t[i])
        nxt = float(t[i + 1]) if i + 1 < len(t) else start
        end = nxt if start < nxt <= start + gap else start + step  # last one holds one step, like the lines
        if runs and runs[-1][2] == state and runs[-1][1] >= start:
            runs[-1] = (runs[-1][0], end, state)
        else:
            runs.append((start, end, state))
    return runs

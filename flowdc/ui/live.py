"""What the live view shows, kept apart from NiceGUI: the latest state of every host of every
partition, a bounded history for the charts, and the run totals.

Everything comes from real telemetry records (the dicts of the telemetry contract: "kind" "host" or
"run"; lines without "kind" are host lines). Producers call `ingest` from any thread (a telemetry
subscriber, a JSONL tailer, the HTTP push route); the page reads `view()` twice a second. Pure:
no I/O, no clock of its own (times come from the records).
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flowdc.telemetry import Snapshot, source_label

HISTORY_POINTS = 720  # per series: six minutes at two snapshots a second
HISTORY_HOSTS = 200  # hosts whose history is kept; a 40M-row run has far more hosts than charts
RATE_WINDOW_S = 5.0  # rate and MB/s are measured over the last few seconds, not since the start
HOST_ROW_CAP = 500  # rows sent to the page's table (the busiest hosts), refreshed twice a second
CHART_HOSTS = 6  # hosts charted when none are ticked: the busiest
IDLE_AFTER_S = 2.0  # a host missing from its partition's snapshots this long has nothing queued or in flight

# The per-host table: (column key, heading); the keys are the telemetry's own figure names.
HOST_COLUMNS: tuple[tuple[str, str], ...] = (
    ("partition", "partition / run"), ("host", "host"), ("state", "state"), ("limit", "limit"),
    ("inflight", "in-flight"), ("queued", "queued"), ("rtprop_ms", "RTprop ms"), ("p50_ms", "p50 ms"),
    ("p95_ms", "p95 ms"), ("goodput", "goodput/s"), ("ok", "ok"), ("n_429", "429/503"), ("n_5xx", "5xx"),
    ("hold_s", "hold s"),
)


@dataclass
class Totals:
    done: int = 0  # rows finished this run: stored, failed or skipped
    ok: int = 0
    failed: int | None = None  # None: only host figures so far (they count requests, not rows)
    bytes: int | None = None
    rows_total: int | None = None
    rate_per_s: float = 0.0
    mb_per_s: float | None = None
    eta_s: float | None = None
    elapsed_s: float = 0.0
    finished: bool = False
    stopped: bool = False  # the run ended before its rows did (Stop, Ctrl-C): it resumes when started again


@dataclass
class LiveView:
    totals: Totals
    rows: list[dict[str, Any]]  # one per (partition, host), HOST_COLUMNS keys
    partitions: list[str]
    series: dict[str, list[tuple[float, float | None, float | None]]]  # chart name -> (t, limit, p50_ms)
    throughput: list[tuple[float, float, float | None]]  # (t, rows/s, MB/s)
    t0: float | None = None


@dataclass
class _Host:
    figures: dict[str, Any]
    history: deque[tuple[float, float | None, float | None]] = field(
        default_factory=lambda: deque(maxlen=HISTORY_POINTS))


def host_key(partition: str, host: str) -> str:
    return f"{partition}/{host}" if partition else host


class LiveState:
    """Thread-safe latest telemetry, from any number of partitions of one run."""

    def __init__(self, rows_total: int | None = None):
        self._lock = threading.Lock()
        self.reset(rows_total)

    def reset(self, rows_total: int | None = None) -> None:
        with self._lock:
            self._hosts: dict[str, _Host] = {}
            self._runs: dict[str, dict[str, Any]] = {}  # partition -> latest run record
            self._totals_hist: deque[tuple[float, int, int | None]] = deque(maxlen=HISTORY_POINTS)
            self._throughput: deque[tuple[float, float, float | None]] = deque(maxlen=HISTORY_POINTS)
            self._rows_total = rows_total
            self._final: dict[str, Any] | None = None
            self._t0: float | None = None
            self._t_last: float | None = None

    # -- producers ------------------------------------------------------------------------------
    def ingest(self, record: Mapping[str, Any]) -> None:
        """One telemetry dict (a host or a run snapshot's to_dict())."""
        t = _num(record.get("t"))
        if t is None:
            return
        # Keyed by run and partition: a download run by itself has no partition id, and its run id
        # still keeps two runs' hosts apart; a distribute run's partitions share its run id.
        partition = source_label(record)
        with self._lock:
            self._t0 = t if self._t0 is None else min(self._t0, t)
            if self._t_last is None or t > self._t_last + 0.2:
                # A new snapshot round: the one before it is complete, note its totals once.
                if self._t_last is not None:
                    self._note_totals(self._t_last)
                self._t_last = t
            if record.get("kind") == "run":
                self._runs[partition] = dict(record)
            elif record.get("host"):
                self._ingest_host(t, partition, record)

    def ingest_lines(self, text: str | bytes) -> int:
        """JSON lines (a JSONL file's new part, or an HTTP push body); bad lines are skipped."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        n = 0
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                self.ingest(record)
                n += 1
        return n

    def finish(self, overview: Mapping[str, Any] | None = None) -> None:
        """The run ended; an overview (overview.json) gives the exact final totals."""
        with self._lock:
            self._final = dict(overview or {})
            if self._t_last is not None:
                self._note_totals(self._t_last)

    # -- the page -------------------------------------------------------------------------------
    def view(self, selected: Iterable[str] = ()) -> LiveView:
        with self._lock:
            newest: dict[str, float] = {}  # per partition: its latest snapshot round
            for h in self._hosts.values():
                p, t = h.figures["partition"], h.figures["t"]
                newest[p] = max(newest.get(p, t), t)
            busiest = sorted((self._row(key, h, newest) for key, h in self._hosts.items()),
                             key=lambda r: (-(r["inflight"] or 0), -(r["queued"] or 0), -(r["limit"] or 0)))
            busiest = busiest[:HOST_ROW_CAP]
            chosen = [k for k in selected if k in self._hosts] or [r["key"] for r in busiest[:CHART_HOSTS]]
            rows = sorted(busiest, key=lambda r: (r["partition"], -(r["limit"] or 0), r["host"]))
            partitions = sorted({r["partition"] for r in rows} | set(self._runs))
            # Chart names: the host alone, unless hosts of several partitions are on show.
            name = (lambda k: k) if len(partitions) > 1 else (lambda k: str(self._hosts[k].figures["host"]))
            return LiveView(
                totals=self._totals(),
                rows=rows,
                partitions=partitions,
                series={name(k): list(self._hosts[k].history) for k in chosen},
                throughput=list(self._throughput),
                t0=self._t0,
            )

    # -- internals ------------------------------------------------------------------------------
    def _ingest_host(self, t: float, partition: str, record: Mapping[str, Any]) -> None:
        key = host_key(partition, str(record["host"]))
        h = self._hosts.get(key)
        if h is None:
            h = self._hosts[key] = _Host({})
        h.figures = {**record, "partition": partition, "t": t}
        if len(self._hosts) <= HISTORY_HOSTS or h.history:
            h.history.append((t, _num(record.get("limit")), _num(record.get("p50_ms"))))

    def _row(self, key: str, h: _Host, newest: dict[str, float]) -> dict[str, Any]:
        f = h.figures
        t = _num(f.get("t")) or 0.0
        hold_s = _num(f.get("hold_s"))  # lines from before hold_s had only the producer's monotonic hold_until
        hold_s = round(hold_s, 1) if hold_s else None
        row = {k: f.get(k) for k, _ in HOST_COLUMNS}
        row.update(key=key, partition=f.get("partition", ""), hold_s=hold_s,
                   n_429=f.get("n_429", f.get("n_429_503")), goodput=_round(f.get("goodput"), 1))
        if self._over() or t < newest[row["partition"]] - IDLE_AFTER_S:
            # Snapshots cover the hosts with work; a host left out of later rounds has none left.
            row.update(state="idle", inflight=0, queued=0)
        return row

    def _over(self) -> bool:
        """The run ended: its overview arrived, or every partition sent its last run snapshot."""
        return self._final is not None or (bool(self._runs) and all(r.get("done") for r in self._runs.values()))

    def _totals(self) -> Totals:
        tot = Totals(rows_total=self._rows_total)
        already = 0  # rows earlier runs finished: no part of this run's rate
        if self._runs:
            runs = self._runs.values()
            tot.ok = sum(int(r.get("ok") or 0) for r in runs)
            tot.failed = sum(int(r.get("failed") or 0) for r in runs)
            skipped = sum(int(r.get("skipped") or 0) for r in runs)
            # Rows an earlier run finished count as done, so done and rows_total (the manifest) compare.
            already = sum(int(r.get("already_done") or 0) for r in runs)
            tot.done = tot.ok + tot.failed + skipped + already
            tot.bytes = sum(int(r.get("bytes") or 0) for r in runs)
            known = [r.get("rows_total") for r in runs]
            if all(isinstance(x, int) for x in known) and self._rows_total is None:
                tot.rows_total = sum(known)  # type: ignore[arg-type]
            tot.finished = all(bool(r.get("done")) for r in runs)
        else:  # host figures only: requests that stored a sample
            tot.ok = tot.done = sum(int(h.figures.get("ok") or 0) for h in self._hosts.values())
        if self._t0 is not None and self._t_last is not None:
            tot.elapsed_s = round(self._t_last - self._t0, 1)
        if self._runs:  # the runs' own clocks, when they send them
            tot.elapsed_s = max([tot.elapsed_s] + [float(r.get("elapsed_s") or 0) for r in self._runs.values()])
        if self._final is not None:  # overview.json's "this_run": the exact counts of the finished run
            run = self._final.get("this_run") or {}
            tot.ok = int(run.get("ok", tot.ok))
            tot.failed = int(run.get("failed", tot.failed or 0))
            already = int(run.get("already_done", 0))
            tot.done = tot.ok + tot.failed + int(run.get("skipped", 0)) + already
            tot.bytes = int(run.get("bytes", tot.bytes or 0))
            tot.elapsed_s = float(self._final.get("elapsed_s", tot.elapsed_s))
            tot.stopped = bool(self._final.get("interrupted"))
            tot.finished = not tot.stopped
        if self._throughput:
            _, rate, mb_s = self._throughput[-1]
            tot.rate_per_s, tot.mb_per_s = rate, mb_s
        if tot.finished or tot.stopped:  # this run's own figures: overview.json's where it has them
            final = self._final or {}
            fetched = tot.done - already
            rate = _num(final.get("images_per_s"))
            tot.rate_per_s = rate if rate is not None else round(fetched / tot.elapsed_s, 1) if tot.elapsed_s else 0.0
            mb_s = _num(final.get("mb_per_s"))
            if mb_s is not None:
                tot.mb_per_s = mb_s
            elif tot.bytes and tot.elapsed_s:
                tot.mb_per_s = round(tot.bytes / tot.elapsed_s / 1e6, 2)
            tot.eta_s = 0.0 if tot.finished else None
        elif tot.rows_total and tot.rate_per_s > 0:
            tot.eta_s = round(max(tot.rows_total - tot.done, 0) / tot.rate_per_s, 1)
        return tot

    def _note_totals(self, t: float) -> None:
        tot = self._totals_raw()
        self._totals_hist.append((t, tot[0], tot[1]))
        then = next((p for p in self._totals_hist if p[0] >= t - RATE_WINDOW_S), self._totals_hist[0])
        dt = t - then[0]
        if dt <= 0:
            return
        rate = round((tot[0] - then[1]) / dt, 1)
        mb_s = round((tot[1] - then[2]) / dt / 1e6, 2) if tot[1] is not None and then[2] is not None else None
        self._throughput.append((t, max(rate, 0.0), mb_s))

    def _totals_raw(self) -> tuple[int, int | None]:
        if self._runs:
            runs = self._runs.values()
            done = sum(int(r.get("ok") or 0) + int(r.get("failed") or 0) + int(r.get("skipped") or 0) for r in runs)
            return done, sum(int(r.get("bytes") or 0) for r in runs)
        return sum(int(h.figures.get("ok") or 0) for h in self._hosts.values()), None


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _round(value: Any, digits: int) -> Any:
    return round(value, digits) if isinstance(value, float) else value


def telemetry_subscriber(state: LiveState) -> Callable[[Snapshot], None]:
    """A `Telemetry.subscribe` callback that feeds `state` (called on the telemetry's own thread)."""

    def on_snapshot(snapshot: Snapshot) -> None:
        state.ingest(snapshot.to_dict())

    return on_snapshot

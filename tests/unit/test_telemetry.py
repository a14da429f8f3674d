"""The telemetry contract: typed snapshots, their JSON lines, and consumers off the publisher's thread."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from flowdc.telemetry import HostSnapshot, RunSnapshot, Telemetry, snapshot_from_dict
from flowdc.telemetry_read import summarize


def test_snapshots_round_trip_through_their_dicts() -> None:
    host = HostSnapshot(12.3456, "h:1", "r1", "00003", state="PROBE_BW", limit=7, inflight=3, n_429_503=2,
                        extra={"new_figure": 1.5})
    d = host.to_dict()
    assert d["kind"] == "host" and d["t"] == 12.346 and d["new_figure"] == 1.5 and "extra" not in d
    assert snapshot_from_dict(d) == HostSnapshot(12.346, "h:1", "r1", "00003", state="PROBE_BW", limit=7,
                                                 inflight=3, n_429_503=2, extra={"new_figure": 1.5})
    run = RunSnapshot(5.0, "r1", None, ok=10, failed=1, bytes=4096, rows_total=20, done=True)
    d = run.to_dict()
    assert d["kind"] == "run" and d["done"] is True and d["rows_total"] == 20
    assert snapshot_from_dict(d) == run


def test_an_old_line_without_kind_reads_as_a_host_snapshot() -> None:
    old = {"t": 1.5, "host": "127.0.0.2:80", "state": "STARTUP", "limit": 8, "inflight": 2, "queued": 5}
    snap = snapshot_from_dict(old)
    assert isinstance(snap, HostSnapshot)
    assert (snap.host, snap.limit, snap.queued, snap.run_id) == ("127.0.0.2:80", 8, 5, None)


def test_a_blocked_subscriber_neither_blocks_publish_nor_other_subscribers() -> None:
    """A subscriber stuck in its callback: publish still returns at once, another subscriber gets
    every batch, and the stuck one later gets the newest batches (its oldest were dropped)."""
    tel = Telemetry(queue_batches=4)
    release = threading.Event()
    stuck: list[int] = []
    fine: list[int] = []
    threads: set[int] = set()

    def slow(snap: object) -> None:
        threads.add(threading.get_ident())
        release.wait(10)
        assert isinstance(snap, RunSnapshot)
        stuck.append(snap.ok)

    tel.subscribe(slow)
    tel.subscribe(lambda snap: fine.append(snap.ok))  # type: ignore[union-attr]
    publish_s = 0.0
    for i in range(50):  # paced like a download's ticks, only faster
        start = time.monotonic()
        tel.publish([RunSnapshot(float(i), ok=i)])
        publish_s = max(publish_s, time.monotonic() - start)
        time.sleep(0.02)
    assert publish_s < 0.05
    deadline = time.monotonic() + 5
    while len(fine) < 50 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fine == list(range(50))
    assert tel.dropped >= 40  # the stuck one's queue holds 4 batches
    release.set()
    tel.close()
    assert threading.get_ident() not in threads
    assert stuck[-4:] == [46, 47, 48, 49] and len(stuck) <= 6


def test_a_failing_subscriber_is_contained() -> None:
    tel = Telemetry()
    got: list[float] = []

    def broken(snap: object) -> None:
        raise RuntimeError("subscriber bug")

    tel.subscribe(broken)
    unsubscribe = tel.subscribe(lambda snap: got.append(snap.t))  # type: ignore[union-attr]
    tel.publish([RunSnapshot(1.0)])
    tel.publish([RunSnapshot(2.0)])
    tel.close()
    assert got == [1.0, 2.0]
    unsubscribe()  # after close: harmless


def test_a_log_mixing_old_and_new_lines_is_summarized(tmp_path: Path) -> None:
    """Host lines with or without "kind" count; run lines are stepped over, even as the first line.
    The old line is an earlier run's (no run id): the later run's counters add to its own."""
    lines = [RunSnapshot(0.5, "r").to_dict(),
             {"t": 1.0, "host": "a:1", "limit": 4, "requests": 10, "ok": 9},  # a line from before "kind"
             HostSnapshot(5.0, "a:1", "r", limit=6, requests=30, ok=28).to_dict(),
             RunSnapshot(5.0, "r", ok=28, done=True).to_dict()]
    log = tmp_path / "t.jsonl"
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    summary = summarize(log)
    assert list(summary) == ["a:1"]
    assert (summary["a:1"]["requests"], summary["a:1"]["max_limit"], summary["a:1"]["snapshots"]) == (40, 6, 2)


def test_reading_a_log_loads_no_plotting_library() -> None:
    code = "import sys, flowdc.telemetry_read, flowdc.telemetry, flowdc.sinks; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

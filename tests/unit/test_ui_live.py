"""The live view's model: latest host figures per partition, history, run totals, rates and ETA."""

from __future__ import annotations

import json

from flowdc.telemetry import HostSnapshot, Telemetry
from flowdc.ui.live import LiveState, telemetry_subscriber


def host(t: float, name: str, limit: int, ok: int, partition: str | None = None, **more: object) -> dict:
    return {"kind": "host", "t": t, "host": name, "partition_id": partition, "state": "PROBE_BW", "limit": limit,
            "inflight": limit, "p50_ms": 20.0, "ok": ok, "n_429_503": 0, **more}


def run(t: float, ok: int, nbytes: int, partition: str | None = None, done: bool = False,
        rows_total: int | None = 1000) -> dict:
    return {"kind": "run", "t": t, "partition_id": partition, "ok": ok, "failed": 1, "skipped": 0, "bytes": nbytes,
            "rows_total": rows_total, "done": done}


def test_hosts_of_every_partition_each_keep_their_latest_figures_and_history():
    live = LiveState()
    for i in range(4):
        live.ingest(host(100 + i, "a.example:80", limit=4 + i, ok=10 * i, partition="part-00000"))
        live.ingest(host(100.1 + i, "a.example:80", limit=2, ok=i, partition="part-00001"))
    view = live.view()
    assert view.partitions == ["part-00000", "part-00001"]
    rows = {r["key"]: r for r in view.rows}
    assert rows["part-00000/a.example:80"]["limit"] == 7
    assert rows["part-00001/a.example:80"]["limit"] == 2
    assert [lim for _, lim, _ in view.series["part-00000/a.example:80"]] == [4, 5, 6, 7]
    assert view.totals.ok == 33 and view.totals.failed is None  # host figures count requests, not rows


def test_run_snapshots_give_totals_rate_mb_s_and_eta():
    live = LiveState()
    for i in range(8):  # two partitions, each storing 50 rows and 1 MB per second
        live.ingest(run(200 + i, ok=50 * i, nbytes=10**6 * i, partition="p0"))
        live.ingest(run(200.05 + i, ok=50 * i, nbytes=10**6 * i, partition="p1"))
    live.ingest(host(207.1, "h:1", 4, ok=9, partition="p0"))
    assert live.view().rows[0]["state"] == "PROBE_BW"
    tot = live.view().totals
    assert (tot.ok, tot.done) == (2 * 50 * 7, 2 * 50 * 7 + 2)
    assert tot.rows_total == 2000 and tot.failed == 2
    assert abs(tot.rate_per_s - 100.0) < 1.0 and abs(tot.mb_per_s - 2.0) < 0.05
    assert tot.eta_s == 13.0 and not tot.finished  # (2000 - 702) rows at 100/s
    live.ingest(run(207.2, ok=400, nbytes=8 * 10**6, partition="p0", done=True))
    live.ingest(run(207.2, ok=400, nbytes=8 * 10**6, partition="p1", done=True))
    view = live.view()
    assert view.totals.finished and view.rows[0]["state"] == "idle"  # every partition sent its last snapshot


def test_a_finished_run_shows_the_overview_counts_and_no_eta():
    live = LiveState(rows_total=10)
    live.ingest(host(1.0, "h:1", 8, ok=3))
    live.ingest(host(2.0, "h:1", 8, ok=9))
    live.finish({"elapsed_s": 2.0, "this_run": {"ok": 9, "failed": 1, "skipped": 0, "bytes": 4_000_000}})
    view = live.view()
    tot = view.totals
    assert view.rows[0]["state"] == "idle"  # a finished run has no host at work
    assert (tot.done, tot.ok, tot.failed, tot.finished, tot.eta_s) == (10, 9, 1, True, 0.0)
    assert tot.rate_per_s == 5.0 and tot.mb_per_s == 2.0


def test_a_resumed_or_stopped_run_shows_its_own_rate_and_no_false_end():
    """The rate of a finished run is the overview's (this run's stored images a second), not the
    rows earlier runs did over this run's time (12,500/s for a resume with nothing left); a run
    stopped midway is shown as stopped, with no ETA, not as done."""
    resumed = LiveState(rows_total=600)
    resumed.finish({"elapsed_s": 0.048, "images_per_s": 0.0, "mb_per_s": 0.0,
                    "this_run": {"ok": 0, "failed": 0, "skipped": 0, "already_done": 600, "bytes": 0}})
    tot = resumed.view().totals
    assert (tot.done, tot.rate_per_s, tot.mb_per_s, tot.finished) == (600, 0.0, 0.0, True)

    stopped = LiveState(rows_total=2000)
    stopped.finish({"elapsed_s": 20.0, "images_per_s": 74.67, "mb_per_s": 1.5, "interrupted": True,
                    "this_run": {"ok": 1495, "failed": 2, "skipped": 0, "already_done": 505, "bytes": 30_000_000}})
    tot = stopped.view().totals
    assert (tot.rate_per_s, tot.mb_per_s, tot.finished, tot.stopped, tot.eta_s) == (74.67, 1.5, False, True, None)


def test_a_host_left_out_of_later_rounds_shows_as_idle():
    live = LiveState()
    live.ingest(host(1.0, "early:1", 8, ok=5, queued=40))
    for t in (1.5, 2.5, 3.5):
        live.ingest(host(t, "late:1", 4, ok=5))
    rows = {r["host"]: r for r in live.view().rows}
    assert rows["early:1"]["state"] == "idle" and rows["early:1"]["queued"] == 0
    assert rows["late:1"]["state"] == "PROBE_BW"


def test_jsonl_lines_and_old_lines_without_kind_are_read_and_garbage_skipped():
    live = LiveState()
    text = "\n".join([json.dumps({"t": 5.0, "host": "old:1", "limit": 3}), "not json", "[1, 2]",
                      json.dumps(host(5.1, "new:1", 6, ok=1))])
    assert live.ingest_lines(text.encode()) == 2  # a JSON list is no record
    assert {r["host"] for r in live.view().rows} == {"old:1", "new:1"}


def test_the_subscriber_adapter_feeds_the_state_from_a_real_telemetry(tmp_path):
    live = LiveState()
    telemetry = Telemetry(str(tmp_path / "t.jsonl"))
    telemetry.subscribe(telemetry_subscriber(live))
    telemetry.publish([HostSnapshot(10.0, "h:1", partition_id="p7", limit=5, ok=2, state="STARTUP")])
    telemetry.close()
    (row,) = live.view().rows
    assert (row["partition"], row["host"], row["limit"], row["state"]) == ("p7", "h:1", 5, "STARTUP")

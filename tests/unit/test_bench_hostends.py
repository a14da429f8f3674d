"""The bench's host ends: each host's last row from a flowdc run's ledger, named and read against its
own held ideal, so a report says which host bound the makespan."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from hostends import HostEnds, ends_line, host_ends  # noqa: E402
from run import RunResult, ends_lines, own_held_ideals  # noqa: E402
from scenarios import SCENARIOS, ManifestInfo  # noqa: E402

from flowdc.ledger import Ledger, Record  # noqa: E402
from flowdc.storage import Destination  # noqa: E402

START = 1_800_000_000.0


def write_ledger(out: Path, rows: list[tuple[str, str, float]]) -> None:
    """(host, status, seconds after START) per row; a retried row has an earlier failed record."""
    led = Ledger(Destination(str(out)), flush_seconds=3600)
    for row, (host, status, at) in enumerate(rows):
        if status == "ok-after-429":
            led.add(Record(row, f"{row:08d}", f"http://{host}/{row}", "failed", host=host, retryable=True,
                           ts=START + at - 1.0))
            status = "ok"
        led.add(Record(row, f"{row:08d}", f"http://{host}/{row}", status, host=host, ts=START + at))
    led.flush()


def test_each_host_is_done_at_its_last_rows_latest_record(tmp_path: Path) -> None:
    write_ledger(tmp_path / "out", [
        ("127.0.0.2:4000", "ok", 0.6), ("127.0.0.2:4000", "ok", 9.5),
        ("127.0.0.6:4001", "ok", 0.55), ("127.0.0.6:4001", "ok-after-429", 11.8), ("127.0.0.6:4001", "failed", 3.0),
        ("127.0.0.9:4002", "ok", 2.0),  # a host the bench did not name keeps its ledger name
    ])
    ends = host_ends(tmp_path / "out", START, {"127.0.0.2:4000": "queue8", "127.0.0.6:4001": "bucket100"})
    assert ends is not None
    assert round(ends.first_row_s, 2) == 0.55
    assert {k: round(v, 2) for k, v in ends.done_s.items()} == {"queue8": 9.5, "bucket100": 11.8,
                                                                 "127.0.0.9:4002": 2.0}


def test_no_ledger_rows_no_ends(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    assert host_ends(tmp_path / "out", START, {}) is None


def test_the_report_names_the_last_hosts_done_against_their_own_held_ideals() -> None:
    polite = SCENARIOS["polite"]
    counts = (1486, 1351, 2787, 2477, 928, 2971)  # the polite bench's rows per host
    info = ManifestInfo(Path("m.parquet"), sum(counts), counts, None, sum(counts))
    ideals = own_held_ideals(polite, info)
    assert round(ideals["bucket100"] or 0, 2) == 10.19  # 918 rows past the burst at 100/s, 10 ms, one 1-s hold
    assert round(ideals["cap12"] or 0, 2) == 10.33  # 2787 at 12 / 40 ms, one 1-s hold
    assert round(ideals["queue8"] or 0, 2) == 9.34  # a queue shows its limit by latency: no hold
    ends = HostEnds(0.52, {"queue8": 10.1, "bucket100": 11.84, "cap12": 11.5, "queue8-cap24": 10.2, "queue32": 9.9})
    line = ends_line("flowdc", ends, ideals)
    assert line == ("flowdc: first row at 0.52 s; last done (s from its start; the host's own held ideal): "
                    "bucket100 11.8 (10.2), cap12 11.5 (10.3), queue8-cap24 10.2 (9.3)")
    results = [RunResult("flowdc", ends=ends), RunResult("bare")]
    assert ends_lines(polite, info, results) == [line]

"""The ledger: atomic parquet parts, each row's latest state, what a rerun must skip, summaries."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from flowdc.identity import idents
from flowdc.ledger import LEDGER_DIR, Ledger, Record
from flowdc.storage import TMP_MARK, Destination


def make_ledger(tmp_path: Path) -> Ledger:
    return Ledger(Destination(str(tmp_path / "out")), flush_rows=1000, flush_seconds=3600)


def test_latest_is_each_rows_newest_record(tmp_path: Path) -> None:
    """A row's state is its newest record; every other row keeps its own."""
    led = make_ledger(tmp_path)
    led.add(Record(0, "00000001", "http://a/0", "failed", reason="http_503", retryable=True, ts=1.0))
    led.add(Record(1, "00000002", "http://a/1", "ok", sha256="ab", bytes=10, ts=1.0))
    led.flush()
    led.add(Record(0, "00000001", "http://a/0", "ok", sha256="cd", bytes=20, ts=2.0))
    led.add(Record(2, "00000003", "ftp://a/2", "failed", reason="unsupported_scheme:ftp", ts=2.0))
    led.flush()
    rows = {r["row"]: r for r in Ledger(led.dest).latest().to_pylist()}
    assert {k: v["status"] for k, v in rows.items()} == {0: "ok", 1: "ok", 2: "failed"}
    assert rows[0]["sha256"] == "cd" and rows[2]["reason"] == "unsupported_scheme:ftp"


def test_ok_wins_a_timestamp_tie(tmp_path: Path) -> None:
    """Nothing is fetched after an ok, so on equal timestamps the ok record is the state."""
    led = make_ledger(tmp_path)
    led.add(Record(0, "k", "http://a/0", "ok", ts=5.0))
    led.add(Record(0, "k", "http://a/0", "failed", reason="http_503", retryable=True, ts=5.0))
    led.flush()
    assert led.latest()["status"].to_pylist() == ["ok"]


def test_done_index_leaves_out_only_transient_failures(tmp_path: Path) -> None:
    """ok, skipped and final failures are done; retryable failures are fetched again. Records
    without an identity (older ledgers) get theirs from their URLs."""
    led = make_ledger(tmp_path)
    urls = [f"http://a/{i}" for i in range(4)]
    led.add(Record(0, "1", urls[0], "ok"))
    led.add(Record(1, "2", urls[1], "failed", reason="http_404", retryable=False, ident=int(idents(urls)[1])))
    led.add(Record(2, "3", urls[2], "failed", reason="timeout", retryable=True))
    led.add(Record(3, "4", urls[3], "skipped", reason="duplicate_url"))
    led.flush()
    done = led.done_index()
    rows, finished = done.place(np.arange(5), idents([*urls, "http://a/new"]), lambda: 5)
    assert finished.tolist() == [True, True, False, True, False]
    assert rows.tolist() == [0, 1, 2, 3, 4]


def test_rows_are_placed_by_identity_not_position(tmp_path: Path) -> None:
    """A refresh: rows moved, one removed, one replaced, two added. Known rows keep their row
    numbers (so their keys); a new row whose position the ledger holds for another row gets a
    number past every row of the ledger and of the manifest; a free position is kept."""
    led = make_ledger(tmp_path)
    old = [f"http://a/{i}" for i in range(5)]
    for row, url in enumerate(old):
        led.add(Record(row, str(row + 1), url, "ok", ident=int(idents(old)[row])))
    led.flush()
    done = led.done_index()
    now = [old[4], old[2], "http://a/new", old[0], old[3], "http://a/tail", "http://a/x"]  # old[1] gone
    asked = []
    rows, finished = done.place(np.arange(7), idents(now), lambda: asked.append(1) or 7)
    assert finished.tolist() == [True, True, False, True, True, False, False]
    assert rows.tolist() == [4, 2, 7, 0, 3, 5, 6]  # 'new' sat on row 2 (held by old[2]): moved to 7
    assert asked == [1]
    # The next batch's moved rows continue past the first: row numbers are never given twice.
    more, _ = done.place(np.array([1]), idents(["http://a/later"]), lambda: 99)
    assert more.tolist() == [8] and asked == [1]


def test_a_rerun_after_a_kill_gives_moved_rows_the_numbers_the_killed_run_gave_them(tmp_path: Path) -> None:
    """Moved rows are numbered past the highest row the ledger holds. The killed run recorded some
    of its moved rows, which raised that highest, so a rerun numbered the others anew: the files
    the killed run wrote under their first keys (written, not yet recorded) were left beside the
    rerun's copies, 244 of them in QA. The numbers given are kept before any fetch, and a rerun
    reads them back; a file of them cut short by the kill is skipped (its rows were never fetched)."""
    led = make_ledger(tmp_path)
    old = [f"http://a/{i}" for i in range(5)]
    for row, url in enumerate(old):
        led.add(Record(row, str(row + 1), url, "ok", ident=int(idents(old)[row])))
    led.flush()
    now = [f"http://a/new{i}" for i in range(3)] + old  # three rows put first: they move
    killed = led.done_index()
    killed.on_move = led.remember_moves
    first, _ = killed.place(np.arange(8), idents(now), lambda: 8)
    assert first.tolist()[:3] == [8, 9, 10]
    led.add(Record(10, "11", now[2], "ok", ident=int(idents(now)[2])))  # recorded before the kill: 8 and 9 were not
    led.flush()
    (Path(led.dest.path("_flowdc/moves")) / "torn.parquet").write_bytes(b"PAR1\x00")

    rerun = Ledger(led.dest).done_index()
    again, finished = rerun.place(np.arange(8), idents(now), lambda: 8)
    assert again.tolist() == first.tolist() and finished.tolist() == [False, False, True, *[True] * 5]


def test_parts_appear_whole_and_temporaries_are_ignored(tmp_path: Path) -> None:
    """Parts are written under a hidden temporary name and renamed; stray temporaries are not read."""
    led = make_ledger(tmp_path)
    led.add(Record(0, "1", "http://a/0", "ok"))
    led.flush()
    folder = Path(led.dest.path(LEDGER_DIR))
    (folder / f".leftover.parquet{TMP_MARK}123-0").write_bytes(b"half a parquet")
    names = os.listdir(folder)
    assert len([n for n in names if n.endswith(".parquet")]) == 1
    assert led.latest().num_rows == 1
    assert led.dest.remove_temporaries() == 1


def test_flush_only_when_due(tmp_path: Path) -> None:
    """Records are buffered until flush_rows is reached (or flush() is called)."""
    led = Ledger(Destination(str(tmp_path / "out")), flush_rows=3, flush_seconds=3600)
    led.add(Record(0, "1", "http://a/0", "ok"))
    led.add(Record(1, "2", "http://a/1", "ok"))
    assert led.part_names() == []
    led.add(Record(2, "3", "http://a/2", "ok"))
    assert len(led.part_names()) == 1
    assert led.latest().num_rows == 3


def test_shard_commits_and_summary(tmp_path: Path) -> None:
    """Shard parts are found by number; summary counts rows, bytes and reasons of the latest states."""
    led = make_ledger(tmp_path)
    led.commit_shard(0, [Record(0, "1", "http://a/0", "ok", bytes=100, shard=0)])
    led.commit_shard(7, [Record(1, "2", "http://a/1", "ok", bytes=50, shard=7)])
    led.add(Record(2, "3", "http://a/2", "failed", reason="http_404"))
    led.add(Record(3, "4", "", "skipped", reason="no_url"))
    led.flush()
    assert led.committed_shards() == {0, 7}
    summary = led.summary()
    assert summary == {"rows": 4, "ok": 2, "failed": 1, "skipped": 1, "bytes": 150,
                       "errors": {"http_404": 1, "no_url": 1}}


def test_empty_ledger_reads_empty(tmp_path: Path) -> None:
    """A fresh output has an empty ledger, an empty done index and zero totals."""
    led = make_ledger(tmp_path)
    assert led.latest().num_rows == 0
    assert led.done_index().rows.size == 0
    assert led.summary()["rows"] == 0


def test_two_ledgers_in_one_process_never_overwrite_each_other(tmp_path: Path) -> None:
    """Two runs on one output from the same process within one second keep both runs' records."""
    dest = Destination(str(tmp_path / "out"))
    first, second = Ledger(dest), Ledger(dest)
    first.add(Record(0, "1", "http://a/0", "skipped", reason="duplicate_url"))
    first.flush()
    second.add(Record(1, "2", "http://a/1", "ok"))
    second.flush()
    assert len(Ledger(dest).part_names()) == 2
    assert sorted(Ledger(dest).latest()["row"].to_pylist()) == [0, 1]


def test_journal_keeps_synced_records_through_a_kill_and_a_torn_tail(tmp_path: Path) -> None:
    """Records synced to the journal survive a kill (the ledger object dropped unflushed); a batch
    torn by the kill is ignored; the next run compacts the journal into a part."""
    led = Ledger(Destination(str(tmp_path / "out")), flush_seconds=3600)
    assert led.journal  # a local destination
    for row in range(3):
        led.add(Record(row, str(row), f"http://a/{row}", "ok"))
    led.sync()
    led.add(Record(3, "3", "http://a/3", "ok"))
    led.sync()
    led.add(Record(4, "4", "http://a/4", "ok"))  # pending only: lost with the process
    (name,) = led.journal_names()
    path = Path(led.dest.path(f"{LEDGER_DIR}/{name}"))
    with open(path, "r+b") as fh:  # the kill tore the last batch
        fh.truncate(path.stat().st_size - 8)
    rerun = Ledger(led.dest)
    assert sorted(rerun.latest()["row"].to_pylist()) == [0, 1, 2]
    assert rerun.compact_journals() == 1
    assert rerun.journal_names() == [] and len(rerun.part_names()) == 1
    assert sorted(rerun.latest()["row"].to_pylist()) == [0, 1, 2]


def test_flush_compacts_the_journal_into_one_part(tmp_path: Path) -> None:
    led = Ledger(Destination(str(tmp_path / "out")), flush_seconds=3600)
    for row in range(4):
        led.add(Record(row, str(row), f"http://a/{row}", "ok"))
        led.sync()
    led.add(Record(9, "9", "http://a/9", "skipped", reason="no_url"))
    led.flush()
    assert led.journal_names() == [] and len(led.part_names()) == 1
    assert sorted(Ledger(led.dest).latest()["row"].to_pylist()) == [0, 1, 2, 3, 9]


def test_object_stores_get_no_journal(tmp_path: Path) -> None:
    led = Ledger(Destination("memory://ledger-journal-test/out"))
    assert not led.journal
    led.add(Record(0, "0", "http://a/0", "ok"))
    led.sync()  # a no-op there: parts only
    assert led.journal_names() == []
    led.flush()
    assert led.latest()["row"].to_pylist() == [0]


def test_a_part_keeps_dictionaries_for_its_repeating_columns_only(tmp_path: Path) -> None:
    """Keys, URLs and digests are mostly unique: a dictionary on them is only tried and dropped."""
    import pyarrow.parquet as pq

    led = make_ledger(tmp_path)
    for row in range(50):
        led.add(Record(row, f"{row:08d}", f"http://a/{row}", "ok", sha256=f"{row:064x}", host="a", ts=1.0))
    led.flush()
    (part,) = led.part_names()
    meta = pq.ParquetFile(os.path.join(led.dest.root, LEDGER_DIR, part)).metadata.row_group(0)
    encodings = {meta.column(i).path_in_schema: meta.column(i).encodings for i in range(meta.num_columns)}
    assert any("DICTIONARY" in e for e in encodings["status"]) and any("DICTIONARY" in e for e in encodings["host"])
    assert not any("DICTIONARY" in e for column in ("key", "url", "sha256") for e in encodings[column])

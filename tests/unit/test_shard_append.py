"""Local webdataset shards appended in place, and what a rerun makes of what a kill left.

Each test plays a killed run by dropping a writer without close() (its file and journal stay as
the process left them) and then recovers with a new ledger and writer, as a rerun does.
"""

from __future__ import annotations

import datetime
import decimal
import os
import tarfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flowdc.ledger import LEDGER_DIR, Ledger, Record
from flowdc.samplemeta import FIELD_TYPES, FIELDS, MANIFEST, meta_types
from flowdc.storage import Destination
from flowdc.writers.base import StoredSample, StoreError
from flowdc.writers.webdataset import SYNC_SECONDS, WebDatasetWriter, metas_table, typed_column


def sample(row: int) -> StoredSample:
    rec = Record(row, f"{row + 1:08d}", f"http://h/{row}.png", "ok", bytes=10, sha256="x")
    return StoredSample(rec, b"%010d" % row, ".png", {"n": row})


def writer(out: Path, per_shard: int = 100, **kwargs: object) -> WebDatasetWriter:
    dest = Destination(str(out))
    w = WebDatasetWriter(dest, Ledger(dest), per_shard, **kwargs)  # type: ignore[arg-type]
    w.recover()
    return w


def members(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return [m.name for m in tar.getmembers()]


def ok_rows(out: Path) -> list[int]:
    table = Ledger(Destination(str(out))).latest(["row", "status"])
    return sorted(r["row"] for r in table.to_pylist() if r["status"] == "ok")


def kill(w: WebDatasetWriter, unsynced_rows: range, torn: bytes = b"") -> None:
    """Sync what was written, then write more that never reaches the ledger, plus a torn tail."""
    w._sync()
    for row in unsynced_rows:
        w.write(sample(row))
    w._tar.flush()  # type: ignore[union-attr]
    w._file.write(torn)
    w._file.flush()
    w.ledger._close_journal()


def killed_run(out: Path, recorded: range, unsynced: range = range(0), torn: bytes = b"") -> None:
    w = writer(out)
    for row in recorded:
        w.write(sample(row))
    kill(w, unsynced, torn)


def test_a_killed_shard_is_cut_back_to_its_recorded_samples_and_appended_to(tmp_path: Path) -> None:
    out = tmp_path / "out"
    killed_run(out, range(5), range(5, 8), torn=b"\x01" * 700)
    assert not list(out.glob("*.tar")) and (out / ".000000.tar.open").is_file()
    assert ok_rows(out) == [0, 1, 2, 3, 4]  # from the journal the kill left

    w2 = writer(out)
    for row in range(5, 10):  # the rows not recorded are fetched again
        w2.write(sample(row))
    w2.close()
    names = members(out / "000000.tar")
    assert names == [f"{r + 1:08d}{ext}" for r in range(10) for ext in (".png", ".json")]
    assert pq.read_table(out / "000000.parquet")["row"].to_pylist() == list(range(10))
    assert ok_rows(out) == list(range(10))
    assert not [n for n in os.listdir(out / LEDGER_DIR) if n.endswith(".journal")]  # compacted


def test_a_rerun_with_nothing_to_fetch_still_completes_the_open_shard(tmp_path: Path) -> None:
    out = tmp_path / "out"
    killed_run(out, range(3))
    writer(out).close()
    assert members(out / "000000.tar") == [f"{r + 1:08d}{ext}" for r in range(3) for ext in (".png", ".json")]
    assert not (out / ".000000.tar.open").exists()
    assert (out / LEDGER_DIR / "shard-000000.parquet").is_file()


def test_a_shard_renamed_but_not_marked_is_completed_not_removed(tmp_path: Path) -> None:
    """Killed between the rename and the commit part: its samples are recorded, so it is whole."""
    out = tmp_path / "out"
    w = writer(out, per_shard=4)
    for row in range(4):
        w.write(sample(row))
    assert (out / "000000.tar").is_file()
    (out / LEDGER_DIR / "shard-000000.parquet").unlink()
    (out / "000000.parquet").unlink()
    w2 = writer(out, per_shard=4)
    w2.close()
    assert (out / LEDGER_DIR / "shard-000000.parquet").is_file()
    assert pq.read_table(out / "000000.parquet")["row"].to_pylist() == [0, 1, 2, 3]
    assert ok_rows(out) == [0, 1, 2, 3]


def test_a_recorded_sample_missing_from_its_shard_is_taken_back(tmp_path: Path) -> None:
    """If the file lost what the ledger recorded (a disk that dropped it), those rows are fetched again."""
    out = tmp_path / "out"
    killed_run(out, range(6))
    with open(out / ".000000.tar.open", "r+b") as fh:  # keep the first three samples only
        fh.truncate(3 * 2 * 1024)
    writer(out).close()
    assert ok_rows(out) == [0, 1, 2]
    latest = Ledger(Destination(str(out))).latest(["row", "status", "reason", "retryable"]).to_pylist()
    assert {(r["status"], r["reason"], r["retryable"]) for r in latest if r["row"] >= 3} == {
        ("failed", "store_lost", True)}


def test_a_staged_shard_commits_after_shard_max_seconds(tmp_path: Path) -> None:
    """Where a shard is staged whole (here: one shipped after commit), time bounds it too."""
    shipped: list[int] = []
    out = tmp_path / "out"
    w = writer(out, per_shard=1000, on_commit=shipped.append, shard_max_seconds=0.2)
    assert not w.append
    w.write(sample(0))
    time.sleep(0.25)
    w.write(sample(1))
    assert shipped == [0] and members(out / "000000.tar") == ["00000001.png", "00000001.json",
                                                             "00000002.png", "00000002.json"]
    w.write(sample(2))
    w.close()
    assert shipped == [0, 1] and ok_rows(out) == [0, 1, 2]


def test_poll_acts_on_time_while_no_sample_comes(tmp_path: Path) -> None:
    """Between samples, poll() (the download's ticker calls it on the writer's lane) syncs an
    appended shard's last samples and commits a staged shard open shard_max_seconds."""
    out = tmp_path / "local"
    w = writer(out)
    w.write(sample(0))
    assert ok_rows(out) == []  # written within the sync interval: not recorded yet
    time.sleep(SYNC_SECONDS + 0.05)
    w.poll()
    assert ok_rows(out) == [0] and not list(out.glob("*.tar"))

    shipped: list[int] = []
    staged = writer(tmp_path / "staged", per_shard=1000, on_commit=shipped.append, shard_max_seconds=0.2)
    staged.write(sample(0))
    staged.poll()
    assert shipped == []
    time.sleep(0.25)
    staged.poll()
    assert shipped == [0] and ok_rows(tmp_path / "staged") == [0]


def test_a_failure_in_poll_reaches_the_next_write_with_the_samples_to_fetch_again(tmp_path: Path) -> None:
    out = tmp_path / "staged"
    staged = writer(out, per_shard=1000, on_commit=lambda _shard: None, shard_max_seconds=0.01)
    staged.write(sample(0))
    time.sleep(0.02)

    def refuse(*_args: object) -> None:
        raise OSError("store down")

    staged.ledger.commit_shard = refuse  # type: ignore[method-assign]
    staged.poll()  # does not raise
    with pytest.raises(StoreError) as caught:
        staged.write(sample(1))
    assert sorted(r.row for r in caught.value.records) == [0, 1]
    assert not list(out.glob("*.tar")) and ok_rows(out) == []


def test_a_failed_commit_takes_back_only_what_the_ledger_had_as_ok(tmp_path: Path) -> None:
    """The commit's last sync fails: the commit takes the synced samples back, and the write's
    abort then must not take back the rest. (It did: a row never recorded as ok got a "store_lost"
    record stamped after its final failure, which then hid the failure's reason.)"""
    out = tmp_path / "out"
    w = writer(out, per_shard=4)
    for row in range(2):
        w.write(sample(row))
    w._sync()  # rows 0 and 1 are in the ledger as ok; 2 and 3 are not

    def refuse(*_args: object) -> None:
        raise OSError("disk gone")

    w.write(sample(2))
    w._tar.flush = refuse  # type: ignore[method-assign,union-attr]
    with pytest.raises(StoreError) as caught:
        w.write(sample(3))  # fills the shard: its commit fails
    assert sorted(r.row for r in caught.value.records) == [0, 1, 2, 3]
    w.ledger.flush()
    taken_back = [r["row"] for r in Ledger(Destination(str(out))).read().to_pylist() if r["reason"] == "store_lost"]
    assert sorted(taken_back) == [0, 1]


def test_shard_parquet_rows_of_differing_keys() -> None:
    """A failed row lacks the manifest's columns: the table takes the union, in order of first
    appearance, and a row without a key holds null there."""
    rows = [{"key": "a", "status": "success", "width": 3},
            {"key": "b", "status": "failed_to_download", "error_message": "http_404"},
            {"n": 7, "key": "c", "status": "success", "width": 4}]
    table = metas_table(rows)
    assert table.column_names == ["key", "status", "width", "error_message", "n"]
    assert table.to_pylist() == [
        {"key": "a", "status": "success", "width": 3, "error_message": None, "n": None},
        {"key": "b", "status": "failed_to_download", "width": None, "error_message": "http_404", "n": None},
        {"key": "c", "status": "success", "width": 4, "error_message": None, "n": 7},
    ]
    assert str(table.schema.field("width").type) == "int64" and metas_table([]).num_rows == 0


def test_shard_parquet_types_do_not_depend_on_the_rows() -> None:
    """Our fields have one type each (a shard without a failure has a string error_message too);
    the manifest's columns have its types, those kept apart under MANIFEST as a struct."""
    assert set(FIELD_TYPES) == FIELDS
    types = meta_types({"when": pa.date32(), "width": pa.float32(), "score": pa.float64()})
    assert types["when"] == pa.date32() and types["width"] == pa.int64()  # ours wins; the manifest's kept apart
    assert types[MANIFEST] == pa.struct([pa.field("width", pa.float32())])
    table = metas_table([{"key": "a", "error_message": None, "exif": None, "when": datetime.date(2024, 1, 2)}], types)
    assert [str(t) for t in table.schema.types] == ["string", "string", "string", "date32[day]"]


def test_values_back_from_json_take_their_column_type() -> None:
    """A failed row's manifest values come back from the ledger's JSON as text, after samples that
    hold the real objects: that mix once failed the shard's commit (ArrowTypeError) and lost its
    samples. Text that fits no way keeps the column as text rather than lose the shard."""
    day = typed_column([datetime.date(2024, 1, 2), "2024-01-03", None], pa.date32())
    assert day.to_pylist() == [datetime.date(2024, 1, 2), datetime.date(2024, 1, 3), None]
    price = typed_column([decimal.Decimal("1.25"), "2.50"], pa.decimal128(6, 2))
    assert price.type == pa.decimal128(6, 2) and price.to_pylist() == [decimal.Decimal("1.25"), decimal.Decimal("2.50")]
    at = typed_column([datetime.datetime(2024, 1, 2, 3, 4, 5), "2024-01-02 03:04:06"], pa.timestamp("ms"))
    assert at.to_pylist()[1] == datetime.datetime(2024, 1, 2, 3, 4, 6)
    odd = typed_column([datetime.date(2024, 1, 2), "not a day"], pa.date32())
    assert odd.type == pa.string() and odd.to_pylist() == ["2024-01-02", "not a day"]
    assert typed_column([1, "x"], None).to_pylist() == ["1", "x"]  # no type known: text, not an error

"""Which shard-named files a rerun may remove, and which numbers its new shards take.

A shard flowdc began is noted in the ledger before its first file (or is open under flowdc's hidden
name, or has recorded samples): only such a shard is removed when it was never committed. A file
that only looks like a shard stays untouched and its number is never written over; the shards
flowdc writes stay numbered 0..N without a gap, so `{000000..N}.tar` finds every one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flowdc.ledger import LEDGER_DIR, Ledger
from flowdc.storage import Destination
from flowdc.writers.base import StoreError
from flowdc.writers.webdataset import WebDatasetWriter
from tests.unit.test_shard_append import members, ok_rows, sample, writer


def shard_names(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("*.tar"))


def two_committed_shards(out: Path) -> None:
    w = writer(out, per_shard=2)
    for row in range(4):
        w.write(sample(row))
    w.close()
    assert shard_names(out) == ["000000.tar", "000001.tar"]


def test_an_empty_open_shard_left_by_a_kill_leaves_no_gap(tmp_path: Path) -> None:
    """A kill just after the next shard was opened leaves `.000002.tar.open` with no recorded
    sample: the rerun removes it and its next shard is 000002 again, not 000003."""
    out = tmp_path / "out"
    two_committed_shards(out)
    (out / ".000002.tar.open").write_bytes(b"")
    w = writer(out, per_shard=2)
    assert not (out / ".000002.tar.open").exists()
    w.write(sample(4))
    w.close()
    assert shard_names(out) == ["000000.tar", "000001.tar", "000002.tar"]
    assert members(out / "000002.tar") == ["00000005.png", "00000005.json"]


def test_a_staged_shard_killed_before_its_commit_is_removed_and_its_number_reused(tmp_path: Path) -> None:
    """Staged whole (no journal): a kill between the tar's upload and its commit part leaves a
    whole-looking 000002.tar whose samples the ledger never recorded. Its note says flowdc began it."""
    out = tmp_path / "out"
    dest = Destination(str(out))
    staged = writer(out, per_shard=2, on_commit=lambda _shard: None)
    for row in range(6):
        staged.write(sample(row))
    staged.close()
    assert shard_names(out) == ["000000.tar", "000001.tar", "000002.tar"]
    Ledger(dest).uncommit_shard(2)  # what the kill leaves: the files, the note, no commit part
    assert (out / LEDGER_DIR / "shard-000002.started").is_file()

    again = writer(out, per_shard=2, on_commit=lambda _shard: None)
    assert shard_names(out) == ["000000.tar", "000001.tar"] and not (out / "000002.parquet").exists()
    assert not list((out / LEDGER_DIR).glob("*.started"))
    for row in (4, 5):
        again.write(sample(row))
    again.close()
    assert shard_names(out) == ["000000.tar", "000001.tar", "000002.tar"]
    assert ok_rows(out) == list(range(6))


def test_look_alikes_stay_and_are_never_written_over(tmp_path: Path) -> None:
    """Files named like shards that flowdc never began (a user's 000099.tar, a stray
    000042_stats.json, even one at the very next number) are not removed by a rerun, and new
    shards take the next numbers that are free of them."""
    out = tmp_path / "out"
    two_committed_shards(out)
    mine = {"000099.tar": b"my own tar", "000042_stats.json": b"{}", "000002.tar": b"next in line"}
    for name, body in mine.items():
        (out / name).write_bytes(body)
    w = writer(out, per_shard=2)
    for row in range(4, 8):
        w.write(sample(row))
    w.close()
    assert {name: (out / name).read_bytes() for name in mine} == mine
    assert shard_names(out) == ["000000.tar", "000001.tar", "000002.tar", "000003.tar", "000004.tar", "000099.tar"]
    assert members(out / "000003.tar")[0] == "00000005.png"
    assert ok_rows(out) == list(range(8))


def test_a_committed_shard_keeps_no_note(tmp_path: Path) -> None:
    out = tmp_path / "out"
    two_committed_shards(out)
    assert Ledger(Destination(str(out))).started_shards() == set()


class _FlakyStore(Destination):
    """A local destination whose metadata writes and removals fail while `down` is set: a store
    outage that makes a shard's commit fail, and its clean-up wait for the next commit."""

    down = False

    def write_bytes(self, name: str, data: bytes) -> None:
        if self.down and name.endswith(".parquet"):
            raise OSError("store unreachable")
        super().write_bytes(name, data)

    def remove(self, name: str) -> None:
        if self.down:
            raise OSError("store unreachable")
        super().remove(name)


def staged_writer(dest: Destination, per_shard: int) -> WebDatasetWriter:
    w = WebDatasetWriter(dest, Ledger(dest), per_shard, on_commit=lambda _shard: None)
    w.recover()
    return w


def lose_a_shard(out: Path, rows_before: int) -> tuple[_FlakyStore, WebDatasetWriter]:
    """A staged writer, two samples a shard, that stored rows 0..rows_before-1 and began the next
    shard; the store then goes down, so that shard's commit fails. The store is left down."""
    dest = _FlakyStore(str(out))
    w = staged_writer(dest, per_shard=2)
    for row in range(rows_before + 1):
        w.write(sample(row))
    dest.down = True
    with pytest.raises(StoreError):
        w.write(sample(rows_before + 1))  # fills the shard: its commit fails
    return dest, w


def test_a_shard_dropped_by_a_failed_commit_gives_its_number_to_the_next_one(tmp_path: Path) -> None:
    """Shard 000001's commit fails (the store is down) and the shard is removed; its rows are
    fetched again later in the run. The number is taken again, so the run's shards are 0..N."""
    out = tmp_path / "out"
    dest, w = lose_a_shard(out, rows_before=2)  # 000001 is lost
    dest.down = False
    for row in (4, 5, 2, 3):  # the lost rows come back after others, as the run's retries do
        w.write(sample(row))
    w.close()
    assert shard_names(out) == ["000000.tar", "000001.tar", "000002.tar"]
    assert ok_rows(out) == list(range(6))


def test_a_gap_left_by_an_earlier_run_is_filled_by_the_next(tmp_path: Path) -> None:
    """Shard 000002's commit fails and the store is still down for its removal; 000003 opens
    meanwhile and is the run's last. 000002 is removed at that commit, too late for this run: the
    rerun's first shard takes the number, and the output is 0..N again."""
    out = tmp_path / "out"
    dest, w = lose_a_shard(out, rows_before=4)  # 000002 is lost, and so is its removal
    assert (out / "000002.tar").exists()
    w.write(sample(6))  # 000003 opens
    dest.down = False
    w.close()  # 000002 is removed before 000003 is committed
    assert shard_names(out) == ["000000.tar", "000001.tar", "000003.tar"]

    again = staged_writer(Destination(str(out)), per_shard=2)
    for row in (4, 5):
        again.write(sample(row))
    again.close()
    assert shard_names(out) == ["000000.tar", "000001.tar", "000002.tar", "000003.tar"]
    assert ok_rows(out) == list(range(7))

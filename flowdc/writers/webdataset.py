"""webdataset tar shards: NNNNNN.tar with KEY.EXT + KEY.json per sample, and NNNNNN.parquet beside it
(each name after an optional shard_prefix, unique across a distributed dataset: shardnames.py).

A shard becomes part of the dataset in three steps: its tar is completed under its final name,
its metadata parquet is written, and then its ledger part is committed. The ledger notes the
shard before its first file (Ledger.start_shard). On restart, a tar or parquet of a noted shard
without a ledger part is an orphan of a killed run and is removed; its samples were never
recorded as ok, so they are fetched again: nothing is lost and nothing is stored twice. A file
that only looks like a shard is never removed nor written over; new shards take the lowest number
no shard holds (a removed shard's, else the one after the last), so the shards stay 000000..N
without a gap.
When a commit fails, any of the three may still have reached the store (a connection can break
after the store took a write), so the shard is removed again before any later shard commits.
Where shards are staged whole (object stores, cloud_tool), a shard is also committed once it has
been open `shard_max_seconds`, so a kill loses at most that much.

On a local disk with a journaling ledger the open shard is appended to in place instead, as
`.NNNNNN.tar.open`: every SYNC_SECONDS its new members go to the file and their records to the
ledger (as ok, naming the shard), so a kill -9 loses about a second. Committing it writes the end
of the archive and its parquet, renames it to NNNNNN.tar, and writes an empty commit part. A rerun
cuts the open file back to its last recorded sample and keeps appending (see shardresume.py).
"""

from __future__ import annotations

import asyncio
import heapq
import io
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack, suppress
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from flowdc.child_process import WriteProcessDied
from flowdc.errors import ConfigError
from flowdc.jsonenc import encode_json
from flowdc.ledger import Ledger, Record
from flowdc.samplemeta import FIELD_TYPES, ShardStats, sample_meta
from flowdc.storage import Destination
from flowdc.writers.base import StoredSample, StoreError
from flowdc.writers.shardnames import ShardNames
from flowdc.writers.shardresume import RecordedPrefix, recorded_in_shards, recorded_prefix, retraction
from flowdc.writers.tarstream import TarStream

if TYPE_CHECKING:
    from flowdc.shard_process import RemoteTar, ShardProcess

log = logging.getLogger(__name__)
SYNC_SECONDS = 0.5  # an appended shard's new samples reach the file and the ledger this often (as the journal)


# Raster formats every loader decodes with Pillow, which reads the format from the bytes, not the name.
RASTER_EXTS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})


def is_raster(sample: StoredSample) -> bool:
    return bool(sample.record.image_format) or sample.ext in RASTER_EXTS


class WebDatasetWriter:
    def __init__(self, dest: Destination, ledger: Ledger, samples_per_shard: int,
                 on_commit: Callable[[int], None] | None = None, shard_max_seconds: float = 60.0,
                 image_key: str = "auto", shard_prefix: str = "",
                 meta_types: Mapping[str, pa.DataType] = FIELD_TYPES):
        # One image key for the whole output, so a loader that takes its columns from the first
        # samples (Hugging Face's webdataset builder) sees every row's image. The bytes stay as
        # served (loaders decode by content); the real format is the .json's image_format. "auto":
        # the first stored image's extension, read back from the first shard on resume.
        self.image_key: str | None = None if image_key == "auto" else image_key
        self.on_commit = on_commit  # e.g. ship the shard to a remote store
        # Append in place where the shard is the output itself; a shipped shard is staged whole.
        self.append = dest.local and ledger.journal and on_commit is None
        self.shard_max_seconds = shard_max_seconds
        self._opened_at = 0.0
        self._unsynced: list[Record] = []  # appended: in the shard, not yet handed to the ledger
        self._last_sync = 0.0
        self._carried: list[Record] = []  # a resumed shard's samples from earlier runs
        self._resume: tuple[int, RecordedPrefix] | None = None  # the open shard a rerun appends to
        self._poll_error: Exception | None = None  # what poll() met, for the next write or close
        self.dest = dest
        self.meta_types = meta_types  # each shard parquet's column types (samplemeta.meta_types)
        self.names = ShardNames(shard_prefix)
        self.ledger = ledger
        self.samples_per_shard = samples_per_shard
        self.next_shard = 0
        self._free: list[int] = []  # numbers under next_shard whose shard is gone: taken first (a heap)
        self._foreign: set[int] = set()  # numbers of shard-named files flowdc did not write: never reused
        self._shard: int | None = None
        self._stack: ExitStack | None = None  # holds the open shard file until commit or abort
        self._tar: TarStream | RemoteTar | None = None  # the open shard's archive
        self.process: ShardProcess | None = None  # writes the members once use_process() handed it over
        self._file: Any = None  # the open shard's file
        self._records: list[Record] = []
        self._metas: list[dict[str, Any]] = []
        self._doubtful: set[int] = set()  # shards whose commit failed: maybe partly or wholly stored
        self._stats = ShardStats()
        # Rows that ended without a sample, from the event loop: listed in the next shard's parquet.
        self._ended: list[dict[str, Any]] = []
        self._ended_lock = threading.Lock()

    def recover(self) -> dict[str, int]:
        compacted = self.ledger.compact_journals()
        committed = self.ledger.committed_shards()
        names = set(self.dest.list())
        uncommitted = {s for n in names if (s := self.names.number(n)) is not None} - committed
        opened = sorted(s for n in names if (s := self.names.open_number(n)) is not None)
        started = self.ledger.started_shards()
        recorded = recorded_in_shards(self.ledger, uncommitted | set(opened))
        stored_key = self._stored_image_key(min(committed | set(recorded), default=None))
        self._check_image_key(stored_key)  # before this run changes anything
        # A shard-named file is flowdc's to remove only if flowdc began that shard: noted in the
        # ledger first, open under our hidden name, or (outputs of older versions) recorded samples
        # name it. Anything else (a user's look-alike 000099.tar, a stray _stats.json) stays.
        ours = uncommitted & (started | set(opened) | set(recorded))
        self._foreign = uncommitted - ours
        if self._foreign:
            log.warning("%s: %s look like shards but flowdc never began them; they stay, and their numbers are "
                        "skipped", self.dest.display, ", ".join(sorted(n for n in names if self.names.number(n)
                                                                      in self._foreign)))
        stats = {"orphan_shard_files_removed": 0, "shards_completed": 0}
        taken_back: list[Record] = []  # ok records whose sample is not in the output after all
        for shard in sorted(ours):
            if shard not in opened and shard in recorded and self.names.name(shard, "tar") in names:
                # Killed between an appended shard's rename and its commit part: the shard is whole.
                self._complete_renamed(shard)
                stats["shards_completed"] += 1
                continue
            for name in self.names.files(shard):  # an open shard's: metadata written just before its rename
                if name in names:
                    self.dest.remove(name)
                    stats["orphan_shard_files_removed"] += 1
            if shard not in opened:  # an open shard's records are weighed against its file below
                taken_back += recorded.get(shard, [])
        for shard in opened:
            recs = recorded.get(shard, [])
            prefix = recorded_prefix(self.dest.path(self.names.open(shard)), {_member(r) for r in recs})
            kept = [r for r in recs if _member(r) in prefix.names]
            taken_back += [r for r in recs if _member(r) not in prefix.names]
            if not kept or not self.append:
                self.dest.remove(self.names.open(shard))
                taken_back += kept
                continue
            if self._resume is not None:  # one shard is open at a time: an older one is finished now
                self._finish_recovered(*self._resume)
                stats["shards_completed"] += 1
            self._resume, self._carried = (shard, prefix), kept
        if taken_back:
            # Before done_index() reads the ledger, so these rows are fetched again.
            self.ledger.supersede([retraction(r, "store_lost") for r in taken_back])
            self.ledger.flush()
        in_flight = {self._resume[0]} if self._resume is not None else set()
        for shard in started - in_flight:  # committed, or nothing of it is left
            self.ledger.forget_shard(shard)
        # Numbers follow the shards that are left, so a removed orphan's number is used again and
        # the shards stay 000000..N with no gap (a brace pattern over them finds every file).
        kept_shards = self.ledger.committed_shards() | in_flight
        self.next_shard = max(kept_shards) + 1 if kept_shards else 0
        # An earlier run's dropped shard (its commit failed) left a gap: the first new shards fill it.
        self._free = sorted(set(range(self.next_shard)) - kept_shards - self._foreign)
        if self.image_key is None:
            self.image_key = stored_key
        return {**stats, "samples_taken_back": len(taken_back), "journals_compacted": compacted,
                "temporaries_removed": self.dest.remove_temporaries()}

    def _complete_renamed(self, shard: int) -> None:
        if not self.dest.exists(self.names.name(shard, "parquet")):
            prefix = recorded_prefix(self.dest.path(self.names.name(shard, "tar")), None)
            self._write_metadata(shard, prefix.metas)
        self.ledger.commit_shard(shard, [])

    def _finish_recovered(self, shard: int, prefix: RecordedPrefix) -> None:
        """Close an older open shard as it stands (cut back to its recorded samples)."""
        with open(self.dest.path(self.names.open(shard)), "r+b") as fh:
            fh.truncate(prefix.end)
            fh.seek(prefix.end)
            TarStream(fh, offset=prefix.end).finish()
        self._write_metadata(shard, prefix.metas)
        os.replace(self.dest.path(self.names.open(shard)), self.dest.path(self.names.name(shard, "tar")))
        self.ledger.commit_shard(shard, [])

    def _check_image_key(self, stored: str | None) -> None:
        """An explicit --image_key must be the one the stored shards use: Hugging Face's builder
        takes its columns from the first samples and silently drops another extension's images."""
        if self.image_key is not None and stored is not None and stored != self.image_key:
            raise ConfigError(f"--image_key {self.image_key}: the shards in {self.dest.display} hold their images as "
                              f".{stored} (one image key per dataset); rerun with --image_key {stored} or auto, or "
                              "give a new --output")

    def _stored_image_key(self, shard: int | None) -> str | None:
        """The extension of the shard's first member (a ustar name: the header's first 100 bytes);
        None when there is no shard or it starts with no raster image. A shard shipped elsewhere
        (cloud_tool) is not here to read: the ledger names its members."""
        if shard is None:
            return None
        for name in (self.names.name(shard, "tar"), self.names.open(shard)):
            try:
                with self.dest.open_read(name) as fh:
                    member = fh.read(100).split(b"\0")[0].decode("utf-8", "replace")
            except FileNotFoundError:
                continue
            return _raster_key(member)
        return self._image_key_in_ledger()

    def _image_key_in_ledger(self) -> str | None:
        """The image key of the first stored sample the ledger names (`NNNNNN.tar:KEY.EXT`)."""
        import pyarrow.compute as pc  # only for a run whose shards were shipped

        latest = self.ledger.latest(["status", "path"])
        stored = latest.filter(pc.and_(pc.equal(latest["status"], "ok"), pc.match_substring(latest["path"], ".tar:")))
        for path in stored["path"].slice(0, 64).to_pylist():
            key = _raster_key(path.rpartition(":")[2])
            if key is not None:
                return key
        return None

    def poll(self) -> None:
        """Act on time while no sample comes (on the writer's lane, between writes): an appended
        shard's last samples reach the ledger, a staged shard open `shard_max_seconds` is committed.
        Never raises: a failure is kept and raised by the next write() or close(), which know how
        to hand its samples back."""
        if self._tar is None or self._poll_error is not None:
            return
        clock = time.monotonic()
        try:
            if self.append and self._unsynced and clock - self._last_sync >= SYNC_SECONDS:
                self._sync()
            elif not self.append and clock - self._opened_at >= self.shard_max_seconds:
                self._commit_shard()
        except Exception as exc:
            self._poll_error = exc

    def write(self, sample: StoredSample) -> None:
        try:
            if self._poll_error is not None:
                error, self._poll_error = self._poll_error, None
                raise error
            self._append(sample)
        except WriteProcessDied:
            raise  # as a kill would: the open shard stays for the rerun to cut back and append to
        except Exception as exc:
            lost = [*self._records] if sample.record in self._records else [*self._records, sample.record]
            self.abort()
            raise StoreError(exc, lost) from exc

    def _append(self, sample: StoredSample) -> None:
        if self._tar is None:
            self._open_shard()
        assert self._tar is not None and self._shard is not None
        rec = sample.record
        rec.shard = self._shard
        ext = sample.ext
        if is_raster(sample):  # a body that is no raster image (an SVG, say) keeps its own extension
            if self.image_key is None:
                self.image_key = ext.lstrip(".")
            ext = f".{self.image_key}"
        media = rec.key + ext
        rec.path = f"{self.names.name(self._shard, 'tar')}:{media}"
        meta_doc = sample_meta(rec, sample.meta)
        now = int(time.time())
        self._tar.add(media, sample.body, now)
        self._tar.add(rec.key + ".json", encode_json(meta_doc), now)
        self._records.append(rec)
        self._metas.append(meta_doc)
        clock = time.monotonic()
        if self.append:
            self._unsynced.append(rec)
            if clock - self._last_sync >= SYNC_SECONDS:
                self._sync()
        if len(self._metas) >= self.samples_per_shard or (
                not self.append and clock - self._opened_at >= self.shard_max_seconds):
            self._commit_shard()

    def _sync(self) -> None:
        """An appended shard: its new members into the file, then their records into the ledger
        (in that order: the ledger never names a member the file lacks)."""
        assert self._tar is not None and self._stack is not None
        self._tar.flush()
        self._file.flush()  # to the OS: a kill -9 cannot lose it any more
        self._last_sync = time.monotonic()
        unsynced, self._unsynced = self._unsynced, []
        for rec in unsynced:
            self.ledger.add(rec)
        self._journal()

    def _journal(self) -> None:
        """The records just handed over, into the ledger's journal at once (the ledger's own cadence
        would add its half second): in a writer thread here; from the event loop in a thread, as an
        fsync must not hold the loop. (ledger.sync keeps what it could not write for the next try.)"""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.ledger.sync()
            return
        loop.run_in_executor(None, self.ledger.sync)

    def note_ended(self, rec: Record) -> None:
        """A row that ended without a sample (failed or skipped): a row of the open shard's parquet
        (img2dataset lists failures there too). Called from any thread."""
        meta = sample_meta(rec, json.loads(rec.meta) if rec.meta else {})
        with self._ended_lock:
            self._ended.append(meta)

    def close(self) -> None:
        if self._resume is not None:  # a killed run's open shard, and nothing came to add to it
            self._finish_recovered(*self._resume)
            self._resume = None
        if self._tar is not None:
            try:
                if self._poll_error is not None:
                    error, self._poll_error = self._poll_error, None
                    raise error
                self._commit_shard()
            except WriteProcessDied:
                raise
            except Exception as exc:
                lost = self._records
                self.abort()
                if self._doubtful:
                    raise  # not a StoreError: a shard may be half in place, so record nothing more
                raise StoreError(exc, lost) from exc
        self._remove_doubtful()
        self.ledger.flush()

    def abort(self) -> None:
        """Drop the open shard without committing it: its samples are not stored."""
        stack, self._stack = self._stack, None
        if stack is not None:
            # The storage already failed; abandoning the upload is the point, so its errors are moot.
            with suppress(Exception):
                stack.__exit__(RuntimeError, RuntimeError("shard aborted"), None)
        if self.append and self._shard is not None:
            # Its samples were recorded as ok as they were written: take that back, then drop the file.
            self._take_back()
            with suppress(Exception):
                self.dest.remove(self.names.open(self._shard))
        self._reset()

    def _take_back(self) -> None:
        """The open shard's samples the ledger has as ok are not stored after all (once per shard:
        a failed commit takes them back before abort() does)."""
        unsynced = {id(r) for r in self._unsynced}
        synced = [r for r in self._records if id(r) not in unsynced]
        self.ledger.supersede([retraction(r, "store_lost") for r in [*self._carried, *synced]])
        # Every record is now as if never synced: a second call must not take back a row whose final
        # failure (after too many tries) is recorded meanwhile.
        self._carried, self._unsynced = [], list(self._records)

    def _open_shard(self) -> None:
        self._stack = ExitStack()
        self._stats = ShardStats()
        self._opened_at = self._last_sync = time.monotonic()
        if self._resume is not None:  # the shard a killed run left open: cut back and go on
            (self._shard, prefix), self._resume = self._resume, None
            self._file = self._stack.enter_context(open(self.dest.path(self.names.open(self._shard)), "r+b"))  # noqa: SIM115
            self._file.truncate(prefix.end)
            self._file.seek(prefix.end)
            self._metas = list(prefix.metas)
            self._tar = self._shard_stream(prefix.end)
            return
        self._shard = self._take_number()
        self.ledger.start_shard(self._shard)  # before its first file: a rerun knows the shard is ours
        if self.append:
            self.dest.makedirs()
            self._file = self._stack.enter_context(open(self.dest.path(self.names.open(self._shard)), "wb"))  # noqa: SIM115
        else:
            self._file = self._stack.enter_context(self.dest.open_atomic(self.names.name(self._shard, "tar")))
        self._tar = self._shard_stream(0)

    def _take_number(self) -> int:
        """The lowest number no shard holds: a dropped shard's, else the next one a look-alike
        does not hold (never overwritten)."""
        if self._free:
            return heapq.heappop(self._free)
        while self.next_shard in self._foreign:
            self.next_shard += 1
        self.next_shard += 1
        return self.next_shard - 1

    def use_process(self, process: ShardProcess) -> None:
        """From now on the write process writes the members (an appended shard only: a staged one
        is the store's file object). The open shard is handed over where it stands."""
        assert self.append
        self.process = process
        if self._tar is not None:
            self._tar.flush()
            self._file.flush()
            self._tar = self._shard_stream(self._tar.offset)

    def _shard_stream(self, offset: int) -> TarStream | RemoteTar:
        """The open shard's archive from `offset` on: written here, or by the write process."""
        if self.process is None:
            return TarStream(self._file, offset=offset)
        assert self._stack is not None and self._shard is not None
        tar = self.process.open_tar(self.dest.path(self.names.open(self._shard)), offset)
        self._stack.callback(self.process.drop)  # an aborted shard: the child lets go of its file
        return tar

    def _commit_shard(self) -> None:
        assert self._tar is not None and self._stack is not None and self._shard is not None
        # The samples of a failed commit are fetched again: its shard must be gone before they
        # can be committed a second time. Raises (so this shard is lost too) while the store is down.
        self._remove_doubtful()
        shard = self._shard
        with self._ended_lock:
            ended, self._ended = self._ended, []
        try:
            if self.append:
                self._sync()
                self.ledger.sync(check=True)  # its records are safe before it shows: the rerun must not refetch them
            self._tar.finish()
            stack, self._stack = self._stack, None
            stack.close()  # closes the file: a staged shard is now visible under its final name
            self._write_metadata(shard, self._metas + ended, self._stats)
            if self.append:
                os.replace(self.dest.path(self.names.open(shard)), self.dest.path(self.names.name(shard, "tar")))
            # An appended shard's records are in the ledger already: its commit part is a marker.
            self.ledger.commit_shard(shard, [] if self.append else self._records)
        except Exception:
            with self._ended_lock:
                self._ended[:0] = ended  # listed in the next shard instead
            self._doubtful.add(shard)
            if self.append:
                self._take_back()
            with suppress(Exception):  # the store is failing; the next commit or close() tries again
                self._remove_doubtful()
            raise
        self._reset()
        if self.on_commit is not None:
            self.on_commit(shard)

    def _write_metadata(self, shard: int, metas: list[dict[str, Any]], stats: ShardStats | None = None) -> None:
        """The shard's parquet (its samples and the rows that failed meanwhile), then its stats."""
        buf = io.BytesIO()
        pq.write_table(metas_table(metas, self.meta_types), buf)
        self.dest.write_bytes(self.names.name(shard, "parquet"), buf.getvalue())
        stats = stats or ShardStats()  # a recovered shard: its timing is lost, its counts are not
        for meta in metas:
            stats.add(meta)
        self.dest.write_bytes(self.names.stats(shard), json.dumps(stats.to_dict(), indent=1).encode())

    def _remove_doubtful(self) -> None:
        """Remove every file of the shards whose commit failed, the ledger part first, so that a
        shard is never committed without its files; raises if the store still fails."""
        for shard in sorted(self._doubtful):
            self.ledger.uncommit_shard(shard)
            for name in reversed(self.names.files(shard)):
                self.dest.remove(name)
            if self.append:
                self.dest.remove(self.names.open(shard))
            self.ledger.forget_shard(shard)
            self._doubtful.discard(shard)
            heapq.heappush(self._free, shard)  # gone: the next shard takes its number

    def _reset(self) -> None:
        self._tar = None
        self._stack = None
        self._shard = None
        self._records = []
        self._metas = []
        self._carried = []
        self._unsynced = []

def _member(rec: Record) -> str:
    """The media member a record names (its path is SHARD.tar:MEMBER)."""
    return (rec.path or ":").split(":", 1)[1]


def metas_table(rows: list[dict[str, Any]], types: Mapping[str, pa.DataType] | None = None) -> pa.Table:
    """Rows of differing keys (a failed row has no manifest columns) as one table: the union of keys,
    in order of first appearance, a missing key null; a column named in `types` has that type
    (samplemeta.meta_types). Built column by column: Arrow infers one type a column quickly, where
    inferring a struct from the dicts took four times as long."""
    # It runs on the event loop at each shard's commit, so it must be quick: each row's key order as
    # a tuple, deduplicated by a dict, and where all rows share one (the common case) the columns
    # are the rows' values transposed in C (a 10k-sample shard's commit held the loop 150-200 ms).
    shapes = dict.fromkeys(map(tuple, rows))
    if len(shapes) == 1:
        (keys,) = shapes
        columns = dict(zip(keys, map(list, zip(*map(dict.values, rows), strict=True)), strict=True))
    else:
        keys = dict.fromkeys(key for shape in shapes for key in shape)
        columns = {key: [row.get(key) for row in rows] for key in keys}
    types = types or {}
    return pa.table({key: typed_column(values, types.get(key)) for key, values in columns.items()})


def typed_column(values: list[Any], kind: pa.DataType | None) -> pa.Array:
    """`values` as an array of `kind` (None: as Arrow infers it). A row that failed, or a shard
    recovered from its members, has its manifest values back from JSON: a date, a decimal or a time
    as its text, which is cast. A value that fits no way leaves the column as text, not the shard
    unwritten (its samples would be lost)."""
    try:
        return pa.array(values, kind)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError, OverflowError):
        text = pa.array([None if value is None else value if isinstance(value, str) else str(value)
                         for value in values], pa.string())
    if kind is None:
        return text
    try:
        return text.cast(kind)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return text


def _raster_key(member: str) -> str | None:
    """The member's extension when it is a raster image's (`jpg`), else None."""
    ext = "." + member.rpartition(".")[2].lower()
    return ext[1:] if ext in RASTER_EXTS else None

"""The per-sample ledger: the only source of truth for resume and refresh.

The ledger is a folder of immutable parquet parts under OUTPUT/_flowdc/ledger/. A part is written
atomically and never changed, so a killed run loses at most the records not yet flushed, and
those rows are simply fetched again. On a local disk (or a shared filesystem) records also go,
about every half second, into an append-only journal, RUN-NNNNNN-jK.journal (an Arrow IPC
stream, fsync'd), which is compacted into the part RUN-NNNNNN.parquet every few seconds and at close; a
journal left by a killed run is read like a part (a torn last batch is ignored) and compacted by
the next run. So a kill -9 loses about a second of records there, not the flush interval.
A row's state is its latest record (by `ts`):
  ok        the sample is stored (in `path`, or in shard `shard` for webdataset)
  failed    with a `reason`; `retryable` failures are tried again by the next run
  skipped   with a `reason` (e.g. no URL, duplicate URL); never retried
For webdataset, `shard-NNNNNN.parquet` is a shard's commit point, written right after the shard's
tar is in place. Where shards are staged whole it holds the shard's ok records; where a local shard
is appended to, its ok records are journaled as they are written and the part is an empty marker.
"""

from __future__ import annotations

import contextlib
import hashlib
import operator
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from flowdc.errors import UserError
from flowdc.jsonenc import encode_json
from flowdc.storage import Destination

LEDGER_DIR = "_flowdc/ledger"
MOVES_DIR = "_flowdc/moves"  # row numbers given to rows whose manifest number was taken (Ledger.remember_moves)
STARTED = ".started"  # a shard begun and not yet committed: Ledger.start_shard
JOURNAL_EXT = ".journal"
JOURNAL_SECONDS = 0.5  # how often pending records reach the journal: the bound on what a kill -9 loses
JOURNAL_BUFFER_BYTES = 1 << 20  # a sync's records, written out at once
SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("key", pa.string()),
        ("url", pa.string()),
        ("url_hash", pa.int64()),
        ("label", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("retryable", pa.bool_()),
        ("http_status", pa.int32()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
        ("path", pa.string()),
        ("shard", pa.int32()),
        ("attempts", pa.int16()),
        ("host", pa.string()),
        ("ttfb_ms", pa.float32()),
        ("meta", pa.string()),
        ("ts", pa.float64()),
        ("ident", pa.int64()),  # the row's identity across runs (flowdc.identity); null in older ledgers
        # The stored image as Pillow read it (flowdc.images); null with --verify none and in older ledgers.
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("image_format", pa.string()),
        ("duplicate_of", pa.string()),  # --dedupe sha256: the key that holds this row's bytes
        ("original_width", pa.int32()),  # the image as served, when --resize_mode/--encode_format changed it
        ("original_height", pa.int32()),
    ]
)
FIELDS = tuple(SCHEMA.names)
LOW_CARDINALITY = frozenset({"status", "reason", "host"})
# A part's columns that Parquet dictionary-encodes. The others are mostly unique (keys, URLs,
# digests, times): a dictionary tried on them and dropped took a third of a part's write (20k
# records: 30 ms against 20 ms), and the part came out a fifth larger.
DICTIONARY_COLUMNS = [*sorted(LOW_CARDINALITY), "label", "image_format"]


def url_hash(url: str) -> int:
    return int.from_bytes(hashlib.blake2b(url.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                          "little", signed=True)


@dataclass(slots=True)
class Record:
    row: int
    key: str
    url: str
    status: str
    label: str | None = None
    reason: str | None = None
    retryable: bool = False
    http_status: int | None = None
    bytes: int | None = None
    sha256: str | None = None
    path: str | None = None
    shard: int | None = None
    attempts: int = 0
    host: str | None = None
    ttfb_ms: float | None = None
    meta: str | None = None
    ts: float = field(default_factory=time.time)
    url_hash: int = 0  # of the full URL, even when `url` is redacted
    ident: int | None = None  # the row's identity across runs: resume and refresh place rows by it
    source_url: str | None = None  # the URL requested, in memory only (no column): store retries refetch it
    width: int | None = None
    height: int | None = None
    image_format: str | None = None
    duplicate_of: str | None = None
    original_width: int | None = None
    original_height: int | None = None

    def __post_init__(self) -> None:
        if not self.url_hash:
            self.url_hash = url_hash(self.url)


_FIELD_VALUES = operator.attrgetter(*FIELDS)  # source_url is no column


def records_table(records: list[Record]) -> pa.Table:
    # Rows to columns with one attrgetter per record and one typed array per column: about a tenth
    # of from_pydict's cost. It runs on the writer's lane for every journal append and shard commit.
    columns = zip(*map(_FIELD_VALUES, records), strict=True) if records else ([] for _ in FIELDS)
    return pa.Table.from_arrays([_column(col, field.type) for col, field in zip(columns, SCHEMA, strict=True)],
                                schema=SCHEMA)


def _column(values: Sequence[Any], kind: pa.DataType) -> pa.Array:
    # A third of the columns are empty in most records (reason, shard, duplicate_of, ...):
    # a count in C beats converting them.
    if values.count(None) == len(values):
        return pa.nulls(len(values), kind)
    return pa.array(values, type=kind)


def locate(sorted_keys: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(where each wanted value is, or would be, in `sorted_keys`, whether it is there); the keys
    must not be empty."""
    at = np.minimum(np.searchsorted(sorted_keys, wanted), sorted_keys.size - 1)
    return at, sorted_keys[at] == wanted


@dataclass
class DoneIndex:
    """What earlier runs recorded, to place this run's manifest rows by identity, never by position.

    A row whose identity the ledger holds keeps its recorded row number (so its key), and is done
    when its state is final (ok, a non-retryable failure, skipped). A new identity takes its
    manifest row number unless the ledger holds another identity there (rows moved, were removed
    or replaced): then it gets a number past every row of the ledger and of the manifest, so no
    key is reused and no file is renamed. Such numbers are handed to `on_move` before the rows
    are fetched (the download keeps them, Ledger.remember_moves), and an index built again holds
    them: a rerun after a kill gives those rows the same numbers, so the files the killed run
    wrote under them are written again, not left beside copies under new keys.
    """

    idents: np.ndarray  # sorted int64: every identity the ledger holds
    rows: np.ndarray  # row number per entry of idents
    final: np.ndarray  # bool per entry of idents
    taken: np.ndarray  # sorted int64: every row number the ledger holds
    stored: np.ndarray | None = None  # bool per entry of idents: recorded ok (its key holds the bytes)
    next_row: int | None = None  # first spare row number, found when first needed
    on_move: Callable[[np.ndarray, np.ndarray], None] | None = None  # (idents, rows) given new numbers

    @classmethod
    def empty(cls) -> DoneIndex:
        nothing = np.empty(0, np.int64)
        return cls(nothing, nothing, np.empty(0, bool), nothing, np.empty(0, bool))

    def holds(self, idents: np.ndarray) -> np.ndarray:
        """Per identity: whether the ledger holds it as stored."""
        if self.idents.size == 0 or self.stored is None:
            return np.zeros(idents.shape, dtype=bool)
        at, found = locate(self.idents, idents)
        return found & self.stored[at]

    def place(self, positions: np.ndarray, idents: np.ndarray,
              manifest_end: Callable[[], int]) -> tuple[np.ndarray, np.ndarray]:
        """(row numbers, done mask) for a batch of manifest rows. `manifest_end()`: one past the
        largest row number of the manifest (asked only when a row must move)."""
        if self.idents.size == 0:
            return positions, np.zeros(positions.shape, dtype=bool)
        at, found = locate(self.idents, idents)
        rows = np.where(found, self.rows[at], positions).astype(np.int64)
        done = found & self.final[at]
        new = np.flatnonzero(~found)
        if new.size:
            spot = np.minimum(np.searchsorted(self.taken, positions[new]), self.taken.size - 1)
            moved = new[self.taken[spot] == positions[new]]
            if moved.size:
                if self.next_row is None:
                    self.next_row = max(int(self.taken[-1]) + 1, manifest_end())
                rows[moved] = self.next_row + np.arange(moved.size, dtype=np.int64)
                self.next_row += int(moved.size)
                if self.on_move is not None:
                    self.on_move(idents[moved], rows[moved])
        return rows, done


class Ledger:
    def __init__(self, dest: Destination, flush_rows: int = 20000, flush_seconds: float = 5.0,
                 journal: bool | None = None):
        self.dest = dest
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        # Appending is only safe where a file can be appended to in place: not on object stores.
        self.journal = dest.local if journal is None else journal
        self._pending: list[Record] = []
        self._lock = threading.Lock()  # guards _pending
        self._io_lock = threading.Lock()  # one writer of journal and parts at a time, in add() order
        self._last_flush = time.monotonic()
        self._last_journal = time.monotonic()
        self._journal_file: Any = None  # the open journal: (file, its buffer, ipc writer)
        self._journals: list[str] = []  # journal files whose records the next part takes over
        self._journaled: list[pa.Table] = []  # what the open journal holds, for the compacted part
        # Random part too: two runs in one process within a second must not reuse part names.
        self._run = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}-{os.urandom(4).hex()}"
        # True once done_index() found no earlier records: then every row has exactly one record
        # (this run writes a row once), and latest() can skip its sort, which copies the table.
        self.fresh = False
        self._seq = 1
        self._moves_written = 0

    # -- writing --------------------------------------------------------------------------------
    def add(self, record: Record) -> None:
        """Buffer a record; a full buffer is written out at once. Writing on time (the journal's half
        second, the part's 5 s) is flush_if_due's, which a download calls from a thread: done here,
        on the event loop that adds most records, a part's parquet held the loop for a tenth of a
        second every 5 s."""
        with self._lock:
            self._pending.append(record)
            due = len(self._pending) >= self.flush_rows
        if due:
            self.flush(final=False)

    def supersede(self, records: list[Record]) -> None:
        """Add records for rows this run already recorded (e.g. an ok taken back): rows now have
        several records, so latest() must sort again."""
        self.fresh = False
        for rec in records:
            self.add(rec)

    def flush_if_due(self) -> None:
        now = time.monotonic()
        if now - self._last_flush > self.flush_seconds:
            self.flush(final=False)
        elif self.journal and now - self._last_journal >= JOURNAL_SECONDS:
            self.sync()

    def sync(self, *, check: bool = False) -> None:
        """Append pending records to the journal and fsync it (local destinations); cheap, so it
        runs every half second. A failure leaves them pending for the next flush (and raises if
        `check`: the caller needs them safe now)."""
        if not self.journal:
            return
        with self._io_lock:
            with self._lock:
                records, self._pending = self._pending, []
                self._last_journal = time.monotonic()
            if not records:
                return
            try:
                self._append_journal(records_table(records))
            except Exception:
                with self._lock:
                    self._pending = records + self._pending
                self._close_journal()
                if check:
                    raise

    def flush(self, *, final: bool = True) -> None:
        """Write pending records (and the open journal's) as a new part. If the destination is down
        the records stay pending for the next flush; only a final flush reports the failure."""
        with self._io_lock:
            with self._lock:
                records, self._pending = self._pending, []
                self._last_flush = self._last_journal = time.monotonic()
            tables = [*self._journaled, records_table(records)] if records else list(self._journaled)
            if not tables:
                return
            name = f"{self._run}-{self._seq:06d}"
            try:
                self._write_table(f"{name}.parquet", pa.concat_tables(tables))
            except Exception:
                with self._lock:
                    self._pending = records + self._pending
                if final:
                    raise
                return
            # The part holds everything the journal did: drop the journal (a kill before this line
            # leaves both, and a record read twice is harmless: a row's state is its latest record).
            self._close_journal()
            self._journaled = []
            for journal in self._journals:
                self.dest.remove(f"{LEDGER_DIR}/{journal}")
            self._journals = []
            self._seq += 1

    def _append_journal(self, table: pa.Table) -> None:
        if self._journal_file is None:
            # A new file after a failed append: a stream cannot go on after a torn batch.
            name = f"{self._run}-{self._seq:06d}-j{len(self._journals)}{JOURNAL_EXT}"
            path = self.dest.path(f"{LEDGER_DIR}/{name}")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            # Arrow's own file and buffer: with a Python file object each of a batch's ~30 buffers
            # was a call back into Python and a system call, each one a hand-over of the GIL to
            # the event loop and back (the webdataset writer syncs from its thread).
            raw = pa.OSFile(path, "wb")
            sink = pa.BufferedOutputStream(raw, JOURNAL_BUFFER_BYTES)
            self._journals.append(name)
            self._journal_file = (raw, sink, ipc.new_stream(sink, SCHEMA))
        raw, sink, writer = self._journal_file
        writer.write_table(table)
        sink.flush()
        os.fsync(raw.fileno())
        self._journaled.append(table)

    def _close_journal(self) -> None:
        journal, self._journal_file = self._journal_file, None
        if journal is not None:
            with contextlib.suppress(Exception):
                journal[1].close()  # no end-of-stream mark needed: a reader stops at the file's end

    def compact_journals(self) -> int:
        """Turn the journals of earlier (killed) runs into parts of the same name; returns how many."""
        done = 0
        for name in self.journal_names():
            if name.startswith(self._run):
                continue
            table = self._read_journal(name)
            stem = name[: -len(JOURNAL_EXT)]
            # RUN-SEQ.parquet, if there, holds all RUN-SEQ-jK.journal did (it was written first).
            if table.num_rows and not self.dest.exists(f"{LEDGER_DIR}/{stem.rsplit('-j', 1)[0]}.parquet"):
                self._write_table(f"{stem}.parquet", table)
            self.dest.remove(f"{LEDGER_DIR}/{name}")
            done += 1
        return done

    def start_shard(self, shard: int) -> None:
        """Note a shard before its first file exists: until its commit, this note is how a rerun
        (and --force) tells a shard flowdc began from a file that only looks like one."""
        self.dest.write_bytes(f"{LEDGER_DIR}/{_started(shard)}", b"")

    def commit_shard(self, shard: int, records: list[Record]) -> None:
        self._write_table(_shard_part(shard), records_table(records))
        self.forget_shard(shard)  # the commit part names it from now on

    def uncommit_shard(self, shard: int) -> None:
        """Remove a shard's commit (its ledger part), if it was written; the shard stays noted as
        begun, so its files stay flowdc's to remove until forget_shard()."""
        self.start_shard(shard)
        self.dest.remove(f"{LEDGER_DIR}/{_shard_part(shard)}")

    def forget_shard(self, shard: int) -> None:
        """Drop a shard's note once it is committed or every file of it is gone."""
        self.dest.remove(f"{LEDGER_DIR}/{_started(shard)}")

    def _write_table(self, name: str, table: pa.Table) -> None:
        with self.dest.open_atomic(f"{LEDGER_DIR}/{name}") as fh:
            pq.write_table(table, fh, compression="zstd", use_dictionary=DICTIONARY_COLUMNS)

    # -- reading --------------------------------------------------------------------------------
    def part_names(self) -> list[str]:
        return [n for n in self.dest.list(LEDGER_DIR) if n.endswith(".parquet") and not n.startswith(".")]

    def journal_names(self) -> list[str]:
        return [n for n in self.dest.list(LEDGER_DIR) if n.endswith(JOURNAL_EXT) and not n.startswith(".")]

    def _read_journal(self, name: str) -> pa.Table:
        """A journal's whole batches; a batch torn by a kill (the last one) and what follows are ignored."""
        batches = []
        with self.dest.open_read(f"{LEDGER_DIR}/{name}") as fh:
            try:
                reader = ipc.open_stream(fh)
                while True:
                    batches.append(reader.read_next_batch())
            except (StopIteration, pa.ArrowInvalid, OSError, EOFError):
                pass
        # The stream's own schema: a journal of an older flowdc may lack later columns (read() adds them).
        return pa.Table.from_batches(batches, schema=reader.schema) if batches else SCHEMA.empty_table()

    def _read_part(self, name: str, columns: list[str] | None) -> pa.Table:
        try:
            with self.dest.open_read(f"{LEDGER_DIR}/{name}") as fh:
                part = pq.ParquetFile(fh)
                have = part.schema_arrow.names
                return part.read(columns=None if columns is None else [c for c in columns if c in have])
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            # Ours are written whole (temporary name, then rename): this one came from elsewhere.
            raise UserError(f"ledger part {self.dest.url(f'{LEDGER_DIR}/{name}')} is not a readable parquet "
                            f"file ({exc}); move it away or restore it") from None

    def committed_shards(self) -> set[int]:
        return {int(n[6:12]) for n in self.part_names() if n.startswith("shard-")}

    def started_shards(self) -> set[int]:
        """Shards begun and not (or not yet known to be) committed: see start_shard()."""
        return {int(n[6:12]) for n in self.dest.list(LEDGER_DIR) if n.startswith("shard-") and n.endswith(STARTED)}

    def read(self, columns: list[str] | None = None) -> pa.Table:
        """Every record ever written (all runs), as one table."""
        tables = []
        names = self.dest.list(LEDGER_DIR)  # one listing: an object store lists by request
        for name in [n for n in names if n.endswith((".parquet", JOURNAL_EXT)) and not n.startswith(".")]:
            table = self._read_journal(name) if name.endswith(JOURNAL_EXT) else self._read_part(name, columns)
            have = table.schema.names
            for name_ in (columns or FIELDS):  # columns added to the schema later: null in older parts
                if name_ not in have:
                    table = table.append_column(SCHEMA.field(name_), pa.nulls(table.num_rows, SCHEMA.field(name_).type))
            if columns is not None:
                table = table.select(columns)
            # Status, reason and host repeat a lot: as dictionaries, millions of rows stay small.
            for i, f in enumerate(table.schema):
                if f.name in LOW_CARDINALITY and pa.types.is_string(f.type):
                    as_dict = pc.cast(table.column(i), pa.dictionary(pa.int32(), pa.string()))
                    table = table.set_column(i, f.name, as_dict)
            tables.append(table)
        if not tables:
            schema = SCHEMA if columns is None else pa.schema([SCHEMA.field(c) for c in columns])
            return schema.empty_table()
        return pa.concat_tables(tables, promote_options="permissive").unify_dictionaries()

    def latest(self, columns: list[str] | None = None) -> pa.Table:
        """Each row's current state: its latest record."""
        need = None if columns is None else sorted(set(columns) | {"row", "ts", "status"})
        table = self.read(need)
        if table.num_rows == 0 or self.fresh:
            return table if columns is None else table.select(columns)
        latest = table.take(latest_positions(table))
        return latest if columns is None else latest.select(columns)

    def done_index(self) -> DoneIndex:
        latest = self.latest(["row", "status", "retryable", "ident"])
        self.fresh = latest.num_rows == 0
        moved_idents, moved_rows = self.moves()
        if latest.num_rows == 0 and moved_idents.size == 0:
            return DoneIndex.empty()
        status = latest["status"]
        final = pc.or_(pc.not_equal(status, "failed"), pc.invert(pc.fill_null(latest["retryable"], False)))
        rows = latest["row"].to_numpy()
        idents = latest["ident"].to_numpy(zero_copy_only=False)
        if latest["ident"].null_count:
            idents = self._idents_from_urls(rows, latest["ident"])
        final_of, stored = final.to_numpy(zero_copy_only=False), pc.equal(status, "ok").to_numpy(zero_copy_only=False)
        unrecorded = ~np.isin(moved_idents, idents)  # a moved row the ledger holds has its number already
        if unrecorded.any():
            none = np.zeros(int(unrecorded.sum()), dtype=bool)
            idents = np.concatenate([idents, moved_idents[unrecorded]])
            rows = np.concatenate([rows, moved_rows[unrecorded]])
            final_of, stored = np.concatenate([final_of, none]), np.concatenate([stored, none])
        order = np.argsort(idents)
        return DoneIndex(idents[order], rows[order], final_of[order], np.sort(rows), stored[order])

    def remember_moves(self, idents: np.ndarray, rows: np.ndarray) -> None:
        """Keep the row numbers DoneIndex.place gave moved rows, before any of them is fetched."""
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table({"ident": idents.astype(np.int64), "row": rows.astype(np.int64)}), sink)
        name = f"{MOVES_DIR}/{self._run}-{self._moves_written:06d}.parquet"
        self.dest.write_bytes(name, sink.getvalue().to_pybytes())
        self._moves_written += 1

    def moves(self) -> tuple[np.ndarray, np.ndarray]:
        """(idents, rows) of every move kept by remember_moves, the latest per identity. A file cut
        short by a kill is skipped: it was written before its rows were fetched, so none was."""
        tables = []
        for name in sorted(self.dest.list(MOVES_DIR)):
            if name.endswith(".parquet") and not name.startswith("."):
                with contextlib.suppress(pa.ArrowInvalid, OSError):
                    tables.append(pq.read_table(pa.BufferReader(self.dest.read_bytes(f"{MOVES_DIR}/{name}"))))
        if not tables:
            nothing = np.empty(0, np.int64)
            return nothing, nothing
        table = pa.concat_tables(tables)
        idents, rows = table["ident"].to_numpy(), table["row"].to_numpy()
        last = idents.size - 1 - np.unique(idents[::-1], return_index=True)[1]
        return idents[last], rows[last]

    def _idents_from_urls(self, rows: np.ndarray, recorded: pa.ChunkedArray) -> np.ndarray:
        """Identities of records written before the ledger kept them: from their URLs, repeats
        numbered in row order (as the manifest numbers them)."""
        from flowdc.identity import base_hashes, number_repeats  # identity hashes with this module

        urls = self.latest(["row", "url"])
        order = np.argsort(urls["row"].to_numpy(), kind="stable")
        url_rows = urls["row"].to_numpy()[order]
        computed = number_repeats(base_hashes(urls["url"].take(pa.array(order)).to_pylist()))
        computed = computed[np.searchsorted(url_rows, rows)]
        return np.where(recorded.is_null().to_numpy(zero_copy_only=False), computed,
                        recorded.fill_null(0).to_numpy())

    SUMMARY_COLUMNS = ("row", "status", "reason", "bytes", "host", "ttfb_ms")

    def summary(self, latest: pa.Table | None = None) -> dict[str, Any]:
        """Cumulative totals over every run of this output (from `latest(SUMMARY_COLUMNS)` if given)."""
        if latest is None:
            latest = self.latest(list(self.SUMMARY_COLUMNS))
        counts = {s: 0 for s in ("ok", "failed", "skipped")}
        for item in pc.value_counts(latest["status"]).to_pylist() if latest.num_rows else []:
            counts[item["values"]] = item["counts"]
        not_ok = latest.filter(pc.not_equal(latest["status"], "ok")) if latest.num_rows else latest
        reasons: dict[str, int] = {}
        if not_ok.num_rows:
            for item in pc.value_counts(pc.fill_null(not_ok["reason"], "unknown")).to_pylist():
                reasons[item["values"]] = item["counts"]
        # Bytes stored: a refused body (not decodable, say) keeps its size in the ledger, but none on disk.
        total_bytes = pc.sum(pc.if_else(pc.equal(latest["status"], "ok"), latest["bytes"], 0)).as_py() \
            if latest.num_rows else 0
        return {"rows": latest.num_rows, **counts, "bytes": total_bytes or 0,
                "errors": dict(sorted(reasons.items(), key=lambda kv: -kv[1]))}


def _shard_part(shard: int) -> str:
    return f"shard-{shard:06d}.parquet"  # committed_shards() reads the number back from [6:12]


def _started(shard: int) -> str:
    return f"shard-{shard:06d}{STARTED}"  # not .parquet: never read as records


def latest_positions(table: pa.Table) -> np.ndarray:
    """Positions of each row's latest record, in row order. Works on indices only (no table
    copies), which keeps tens of millions of records in a few hundred MB."""
    rows = table["row"].to_numpy()
    ts = table["ts"].to_numpy()
    is_ok = pc.equal(table["status"], "ok").to_numpy(zero_copy_only=False)
    order = np.lexsort((is_ok, ts, rows))  # an ok wins a tie: nothing is fetched after an ok
    del ts, is_ok
    sorted_rows = rows[order]
    last = np.ones(sorted_rows.size, dtype=bool)
    last[:-1] = sorted_rows[1:] != sorted_rows[:-1]
    return order[last]


def meta_json(extra: dict[str, Any]) -> str | None:
    return encode_json(extra).decode() if extra else None

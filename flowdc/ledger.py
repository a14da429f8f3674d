"""The per-sample ledger: the only source of truth for resume and refresh.

The ledger is a folder of immutable parquet parts under OUTPUT/_flowdc/ledger/. A part is written
atomically and never changed, so a killed run loses at most the records not yet flushed, and
those rows are simply fetched again. A row's state is its latest record (by `ts`):
  ok        the sample is stored (in `path`, or in shard `shard` for webdataset)
  failed    with a `reason`; `retryable` failures are tried again by the next run
  skipped   with a `reason` (e.g. no URL, duplicate URL); never retried
For webdataset, a shard's ok records are committed as `shard-NNNNNN.parquet` right after the
shard's tar is in place: that part is the shard's commit point.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flowdc.errors import ConfigError
from flowdc.storage import Destination

LEDGER_DIR = "_flowdc/ledger"
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
    ]
)
FIELDS = tuple(SCHEMA.names)
LOW_CARDINALITY = frozenset({"status", "reason", "host"})


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
    url_hash: int = 0  # of the full URL, even when `url` is redacted: resume matches rows by it
    source_url: str | None = None  # the URL requested, in memory only (no column): store retries refetch it

    def __post_init__(self) -> None:
        if not self.url_hash:
            self.url_hash = url_hash(self.url)


def records_table(records: list[Record]) -> pa.Table:
    columns = {name: [getattr(r, name) for r in records] for name in FIELDS}
    return pa.Table.from_pydict(columns, schema=SCHEMA)


@dataclass
class DoneIndex:
    """Rows whose state is final (ok, non-retryable failure, skipped), for O(log n) batch lookups."""

    rows: np.ndarray  # sorted int64
    hashes: np.ndarray  # url_hash per entry of rows

    def done_mask(self, rows: np.ndarray, hashes: np.ndarray, source: str) -> np.ndarray:
        if self.rows.size == 0:
            return np.zeros(rows.shape, dtype=bool)
        pos = np.searchsorted(self.rows, rows)
        pos_clipped = np.minimum(pos, self.rows.size - 1)
        found = self.rows[pos_clipped] == rows
        changed = found & (self.hashes[pos_clipped] != hashes)
        if changed.any():
            row = int(rows[np.argmax(changed)])
            raise ConfigError(
                f"{source}: row {row} holds a different URL than when this output was written; "
                "the manifest changed under a resumed run (use a new --output, or --force to start over)"
            )
        return found


class Ledger:
    def __init__(self, dest: Destination, flush_rows: int = 20000, flush_seconds: float = 5.0):
        self.dest = dest
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self._pending: list[Record] = []
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        # Random part too: two runs in one process within a second must not reuse part names.
        self._run = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}-{os.urandom(4).hex()}"
        # True once done_index() found no earlier records: then every row has exactly one record
        # (this run writes a row once), and latest() can skip its sort, which copies the table.
        self.fresh = False
        self._seq = 0

    # -- writing --------------------------------------------------------------------------------
    def add(self, record: Record) -> None:
        with self._lock:
            self._pending.append(record)
            due = len(self._pending) >= self.flush_rows or time.monotonic() - self._last_flush > self.flush_seconds
        if due:
            self.flush(final=False)

    def flush_if_due(self) -> None:
        if time.monotonic() - self._last_flush > self.flush_seconds:
            self.flush(final=False)

    def flush(self, *, final: bool = True) -> None:
        """Write pending records as a new part. If the destination is down the records stay
        pending for the next flush; only a final flush reports the failure."""
        with self._lock:
            records, self._pending = self._pending, []
            self._last_flush = time.monotonic()
            if not records:
                return
            self._seq += 1
            try:
                self._write_part(f"{self._run}-{self._seq:06d}.parquet", records)
            except Exception:
                self._pending = records + self._pending
                if final:
                    raise

    def commit_shard(self, shard: int, records: list[Record]) -> None:
        self._write_part(_shard_part(shard), records)

    def uncommit_shard(self, shard: int) -> None:
        """Remove a shard's commit (its ledger part), if it was written."""
        self.dest.remove(f"{LEDGER_DIR}/{_shard_part(shard)}")

    def _write_part(self, name: str, records: list[Record]) -> None:
        table = records_table(records)
        with self.dest.open_atomic(f"{LEDGER_DIR}/{name}") as fh:
            pq.write_table(table, fh, compression="zstd")

    # -- reading --------------------------------------------------------------------------------
    def part_names(self) -> list[str]:
        return [n for n in self.dest.list(LEDGER_DIR) if n.endswith(".parquet") and not n.startswith(".")]

    def committed_shards(self) -> set[int]:
        return {int(n[6:12]) for n in self.part_names() if n.startswith("shard-")}

    def read(self, columns: list[str] | None = None) -> pa.Table:
        """Every record ever written (all runs), as one table."""
        tables = []
        for name in self.part_names():
            with self.dest.fs.open(self.dest.path(f"{LEDGER_DIR}/{name}"), "rb") as fh:
                table = pq.read_table(fh, columns=columns)
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
        latest = self.latest(["row", "url_hash", "status", "retryable"])
        self.fresh = latest.num_rows == 0
        if latest.num_rows == 0:
            return DoneIndex(np.empty(0, np.int64), np.empty(0, np.int64))
        status = latest["status"]
        final = pc.or_(pc.not_equal(status, "failed"), pc.invert(pc.fill_null(latest["retryable"], False)))
        done = latest.filter(final)
        return DoneIndex(done["row"].to_numpy(), done["url_hash"].to_numpy())

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
        total_bytes = pc.sum(latest["bytes"]).as_py() if latest.num_rows else 0
        return {"rows": latest.num_rows, **counts, "bytes": total_bytes or 0,
                "errors": dict(sorted(reasons.items(), key=lambda kv: -kv[1]))}


def _shard_part(shard: int) -> str:
    return f"shard-{shard:06d}.parquet"  # committed_shards() reads the number back from [6:12]


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


_META_ENCODER = json.JSONEncoder(default=str, ensure_ascii=False)  # built once: it is per sample


def meta_json(extra: dict[str, Any]) -> str | None:
    return _META_ENCODER.encode(extra) if extra else None

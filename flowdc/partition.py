"""`flowdc partition`: split a URL manifest into N files for distributed downloading.

Three methods:
- host: whole hosts packed onto N partitions, largest first, each onto the least-loaded one. A host
  with more rows than a fair share (ceil(total / N)) is spread over several partitions, and the plan
  records each piece so a later step can divide that host's politeness budget between them.
- simple: equal sizes (they differ by at most one row); random assignment when a seed is given,
  otherwise contiguous runs in manifest order.
- greedy: whole groups of a column (e.g. the class label) packed largest first.

The manifest is read twice as a stream of Arrow record batches (once to count, once to write), so
memory depends on the batch size and the number of distinct hosts, not on the number of rows.
Every partition gets a `row` column (0-based row number in the manifest, unless the manifest has
one) and a `host` column; all other columns are copied as they are.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import math
import os
import re
import resource
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from flowdc.config import PartitionConfig
from flowdc.errors import ConfigError
from flowdc.localfiles import local_folder_problem
from flowdc.manifest import ROW_COLUMN, Manifest, RowNumbering
from flowdc.urls import host_key

log = logging.getLogger(__name__)

BATCH_ROWS = 1 << 19
ROW_GROUP_ROWS = 1 << 18  # a partition's buffer is written once it holds this many rows
MAX_BUFFERED_ROWS = 1 << 20  # ... and all buffers are written once together they hold this many
DENSE_PAIRS = 1 << 23  # (partition, host) counters kept as one array up to this many (64 MB)
DICTIONARY_MAX_RATIO = 0.5  # parquet dictionaries only for columns with fewer distinct values than this
SPLIT_HOSTS_INLINE = 1000  # simple/greedy: plan.json lists only this many of the largest split hosts
HOST_SHARES_FILE = "_plan/host_shares.parquet"  # '_' keeps it out of globs and dataset readers
PART_NAME = re.compile(r"^part-\d{5,}\.(parquet|csv)$")

# scheme (optional) + '//' + netloc + its delimiter, as urllib.parse.urlsplit finds them in clean ASCII.
_KEY = r"^(?:[A-Za-z][A-Za-z0-9+.\-]*:)?//[^/?#]*[/?#]?"
_NETLOC = r"^[^/]*//([^/?#]*)"
# Anything urlsplit treats specially (whitespace, controls, non-ASCII, IPv6 brackets): left to Python.
_SPECIAL = r"[^\x21-\x5a\x5c\x5e-\x7e]"

Progress = Callable[[int], None]


# --------------------------------------------------------------------------- host extraction


def url_keys(urls: pl.Series) -> pl.Series:
    """The leading part of each URL that decides its host: scheme, '//', authority, delimiter.

    Rows share keys far more often than URLs, so hosts are worked out once per distinct key.
    Keeping the delimiter makes host_key(key) == host_key(url) even when the key holds
    characters urlsplit cleans up. A URL without an authority has no host ("") unless that
    cleaning would create one; those rare rows carry their host itself, after a NUL marker.
    """
    if urls.dtype != pl.String:
        urls = urls.cast(pl.String, strict=False)
    keys = urls.str.extract(_KEY, 0)
    no_key = keys.is_null().arg_true()
    keys = keys.fill_null("")
    if no_key.len():
        rest = urls.gather(no_key)
        odd = rest.str.contains(_SPECIAL).fill_null(False).arg_true()
        if odd.len():
            marked = ["\x00" + host_key(u) for u in rest.gather(odd).to_list()]
            keys = keys.scatter(no_key.gather(odd), marked)
    return keys.rename("key")


def hosts_of_keys(keys: pl.Series) -> pl.Series:
    """host_key of each key from url_keys: a regex for clean ASCII keys, Python for the rest."""
    frame = pl.DataFrame({"k": keys}).select(
        host=pl.col("k").str.extract(_NETLOC, 1).str.replace(r"^.*@", "").str.to_lowercase().fill_null(""),
        special=pl.col("k").str.contains(_SPECIAL),
    )
    hosts = frame["host"]
    slow = frame["special"].arg_true()
    if slow.len():
        hosts = hosts.scatter(slow, [_host_of_odd_key(k) for k in keys.gather(slow).to_list()])
    return hosts.rename("host")


def _host_of_odd_key(key: str) -> str:
    return key[1:] if key.startswith("\x00") else host_key(key)


def host_series(urls: pl.Series) -> pl.Series:
    """Vectorised `flowdc.urls.host_key` over a column: the same string for every row."""
    keys = url_keys(urls)
    distinct = keys.unique()
    table = pl.DataFrame({"key": distinct, "host": hosts_of_keys(distinct)})
    return pl.DataFrame({"key": keys}).join(table, on="key", how="left", maintain_order="left")["host"]


def _compact(values: pl.Series) -> pl.Series:
    """The same values in freshly allocated buffers."""
    copy = pl.from_arrow(values.to_arrow())
    assert isinstance(copy, pl.Series)
    return copy.rename(values.name)


class Codebook:
    """Dense int32 codes for the distinct values of one column, stable across batches.

    Pass one keeps only these codes (4 bytes a row), so pass two needs no string work or joins.
    """

    def __init__(self, expected_rows: int | None = None) -> None:
        self.table: pl.DataFrame | None = None  # value, code (code == row index)
        self._chunks: list[np.ndarray] = []
        # Known row count (parquet): fill one array, so the codes never exist twice.
        self._out = np.empty(expected_rows, dtype=np.int32) if expected_rows else None
        self._filled = 0

    def add(self, values: pl.Series) -> None:
        values = values.rename("value")
        if self.table is None:
            self.table = pl.DataFrame({"value": values.head(0), "code": pl.Series([], dtype=pl.Int32)})
        codes = self._lookup(values)
        if codes.null_count():  # values not seen before: give them the next codes, in order
            missing = codes.is_null().arg_true()
            self._extend(values.gather(missing))
            codes = codes.scatter(missing, self._lookup(values.gather(missing)))
        if codes.len() != values.len() or codes.null_count():
            raise ConfigError(f"cannot group the values of column {values.name!r} (unsupported type?)")
        self._store(codes.to_numpy())

    def _store(self, codes: np.ndarray) -> None:
        end = self._filled + codes.size
        if self._out is not None and end <= self._out.size:
            self._out[self._filled : end] = codes
        else:
            if self._out is not None:  # more rows than announced: fall back to chunks
                self._chunks, self._out = [self._out[: self._filled]], None
            self._chunks.append(codes)
        self._filled = end

    def _lookup(self, values: pl.Series) -> pl.Series:
        assert self.table is not None
        frame = pl.DataFrame({"value": values})
        return frame.join(self.table, on="value", how="left", nulls_equal=True, maintain_order="left")["code"]

    def _extend(self, values: pl.Series) -> None:
        assert self.table is not None
        # A copy: a slice of string views would keep this whole batch's text alive in the table.
        new = _compact(values.unique(maintain_order=True))
        start = self.table.height
        codes = pl.int_range(start, start + new.len(), dtype=pl.Int32, eager=True)
        self.table = pl.concat([self.table, pl.DataFrame({"value": new, "code": codes})])

    def codes(self) -> np.ndarray:
        if self._out is not None:
            return self._out[: self._filled]
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int32)

    @property
    def values(self) -> pl.Series:
        return self.table["value"] if self.table is not None else pl.Series("value", [], dtype=pl.String)


# --------------------------------------------------------------------------- reading the manifest


class Source:
    """The manifest, read through flowdc.manifest so `row` means what it means to `flowdc download`."""

    def __init__(self, cfg: PartitionConfig) -> None:
        self.manifest = Manifest(cfg.input, cfg.url_col, cfg.input_format, batch_rows=BATCH_ROWS)
        self.path = cfg.input
        self.fmt = self.manifest.format
        self.columns = list(self.manifest.columns)  # as in the file, before a `row` column is added
        self.num_rows = self.manifest.num_rows_hint()
        if cfg.method == "greedy" and cfg.group_col:
            self.manifest.require_column(cfg.group_col, "group")

    def batches(self) -> Iterator[pa.RecordBatch]:
        """All columns, with `row`. Parquet rows are numbered here with numpy: the same numbers
        as Manifest's, at a fraction of the cost of its Python range."""
        if self.fmt != "parquet":
            yield from self.manifest.batches()
            return
        numbering = RowNumbering()
        for batch in self.columns_only(None):
            yield numbering(batch)

    def columns_only(self, names: list[str] | None) -> Iterator[pa.RecordBatch]:
        """Pass one needs one or two columns; parquet can skip decoding the others (None: all)."""
        if self.fmt != "parquet" or self.manifest.renamed:  # renamed: a repeated name, read as url.1, ...
            for batch in self.manifest.batches():
                yield batch.select(names) if names else batch
            return
        try:
            # pre_buffer keeps every row group read so far cached until the reader closes:
            # memory would grow with the file (about 0.5 GB per 40M rows here).
            reader = pq.ParquetFile(self.path, pre_buffer=False)
            yield from reader.iter_batches(batch_size=BATCH_ROWS, columns=names)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ConfigError(f"cannot read {self.path} as parquet: {exc}") from None

    def empty_schema(self) -> pa.Schema:
        """The columns of a manifest without rows (no batch will show them)."""
        if self.fmt == "parquet":
            return pq.ParquetFile(self.path).schema_arrow
        return pa.schema([pa.field(c, pa.string()) for c in self.columns])


def _check_config(cfg: PartitionConfig) -> None:
    """Direct callers skip build_config, so repeat its checks (choices included)."""
    cfg.check()
    for name, allowed in (("method", ("host", "simple", "greedy")), ("format", ("parquet", "csv"))):
        if getattr(cfg, name) not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {getattr(cfg, name)!r}")
    out = Path(cfg.output_folder)
    problem = local_folder_problem(cfg.output_folder)
    if problem:
        raise ConfigError(f"--output_folder {cfg.output_folder}: {problem}")
    # Partition files there get replaced or removed, and the input may be one of them.
    if Path(cfg.input).resolve().parent == out.resolve():
        raise ConfigError(f"the input {cfg.input} is inside output_folder; write the partitions elsewhere")


# --------------------------------------------------------------------------- packing (pure)


Pieces = dict[int, list[tuple[int, int]]]


def pack(sizes: Sequence[int], n: int, split_above: int | None = None) -> tuple[list[int], Pieces]:
    """LPT: each item (sizes sorted largest first) goes to the least-loaded of n bins.

    Items larger than split_above are cut into pieces instead, each filling the least-loaded bin up
    to split_above; returns the bin of each item (-1 when cut) and the (bin, size) pieces of cut items.
    """
    heap = [(0, p) for p in range(n)]
    bins: list[int] = []
    pieces: Pieces = {}
    for i, size in enumerate(sizes):
        if split_above is not None and size > split_above:
            pieces[i] = _spread(heap, size, split_above)
            bins.append(-1)
            continue
        load, p = heap[0]
        heapq.heapreplace(heap, (load + size, p))
        bins.append(p)
    return bins, pieces


def _spread(heap: list[tuple[int, int]], size: int, cap: int) -> list[tuple[int, int]]:
    """Pour one large item into the least-loaded bins, topping each up to cap.

    Large items come first, so while rows are left some bin is below cap: every piece is > 0.
    """
    out: list[tuple[int, int]] = []
    left = size
    while left:
        load, p = heapq.heappop(heap)
        room = cap - load
        take = min(left, room) if room > 0 else left
        out.append((p, take))
        left -= take
        heapq.heappush(heap, (load + take, p))
    return out


def fair_share(total: int, n: int) -> int:
    return math.ceil(total / n) if n else 0


# --------------------------------------------------------------------------- first pass


@dataclass
class Scan:
    """What pass one learnt: the row total and, per row, the code of its host (and group)."""

    total: int
    host_names: pl.Series  # host string of each code
    host_codes: np.ndarray
    group_values: pl.Series | None = None
    group_codes: np.ndarray | None = None


def _scan(cfg: PartitionConfig, source: Source, tick: Progress) -> Scan:
    group_col = cfg.group_col if cfg.method == "greedy" else None
    rows = [ROW_COLUMN] if ROW_COLUMN in source.columns else []
    columns = list(dict.fromkeys([cfg.url_col, *([group_col] if group_col else []), *rows]))
    keys = Codebook(source.num_rows)
    groups = Codebook(source.num_rows) if group_col else None
    numbering = RowNumbering()
    for batch in source.columns_only(columns):
        if rows:
            numbering(batch)  # the download's rule for a `row` column, before anything is written
        keys.add(url_keys(_to_polars(batch.column(cfg.url_col))))
        if groups is not None:
            groups.add(_to_polars(batch.column(group_col)).rename(str(group_col)))
        tick(batch.num_rows)
    hosts = Codebook()
    hosts.add(hosts_of_keys(keys.values))
    codes = keys.codes()
    _recode(codes, hosts.codes())  # per-row key codes become per-row host codes
    scan = Scan(codes.size, hosts.values, codes)
    if groups is not None:
        scan.group_values, scan.group_codes = groups.values, groups.codes()
    return scan


def _recode(codes: np.ndarray, mapping: np.ndarray) -> None:
    """codes = mapping[codes] in place, a slice at a time: no second array as long as the manifest."""
    step = 1 << 20
    for start in range(0, codes.size, step):
        codes[start : start + step] = mapping[codes[start : start + step]]


def _to_polars(column: pa.Array | pa.ChunkedArray) -> pl.Series:
    series = pl.from_arrow(column)
    assert isinstance(series, pl.Series)
    return series


def _n_partitions(cfg: PartitionConfig, total: int) -> int:
    if cfg.rows_per_partition > 0:
        return max(1, math.ceil(total / cfg.rows_per_partition))
    return cfg.groups


# --------------------------------------------------------------------------- assigners


def _largest_first(values: pl.Series, codes: np.ndarray) -> tuple[list[int], np.ndarray]:
    """Sizes sorted largest first (ties by value, so plans are reproducible) and their codes."""
    counts = np.bincount(codes, minlength=values.len()) if codes.size else np.zeros(values.len(), np.int64)
    order = pl.DataFrame({"value": values, "len": counts, "code": np.arange(values.len(), dtype=np.int32)})
    order = order.sort(["len", "value"], descending=[True, False], nulls_last=True)
    return order["len"].to_list(), order["code"].to_numpy()


class HostAssigner:
    """Host method: rows of whole hosts follow their host; a split host's rows fill its pieces in
    manifest order (its first pieces[0] rows go to the first piece's partition, and so on)."""

    def __init__(self, scan: Scan, n: int) -> None:
        sizes, codes = _largest_first(scan.host_names, scan.host_codes)
        self.cap = fair_share(scan.total, n)
        bins, pieces = pack(sizes, n, self.cap)
        self.codes = scan.host_codes
        self.part_of = np.empty(len(sizes), dtype=np.int32)
        self.part_of[codes] = bins
        self.split_of = np.full(len(sizes), -1, dtype=np.int32)
        self.split_of[codes[list(pieces)]] = np.arange(len(pieces), dtype=np.int32)
        flat = [piece for p in pieces.values() for piece in p]
        self.piece_parts = np.array([b for b, _ in flat], dtype=np.int32)
        self.piece_ends = np.cumsum([r for _, r in flat], dtype=np.int64)
        # where each split host's pieces start on the concatenated row axis
        split_sizes = np.array([sizes[i] for i in pieces], dtype=np.int64)
        self.base = np.cumsum(split_sizes) - split_sizes
        self.seen = np.zeros(len(pieces), dtype=np.int64)

    def __call__(self, offset: int, count: int) -> np.ndarray:
        codes = self.codes[offset : offset + count]
        part = self.part_of[codes]
        rows = np.flatnonzero(part < 0)
        if rows.size:
            part[rows] = self._split_parts(self.split_of[codes[rows]])
        return part

    def _split_parts(self, sid: np.ndarray) -> np.ndarray:
        order = np.argsort(sid, kind="stable")
        ranked = sid[order]
        rank_sorted = np.arange(sid.size) - np.searchsorted(ranked, ranked, side="left")
        rank = np.empty_like(rank_sorted)
        rank[order] = rank_sorted  # position of each row among its host's rows in this batch
        position = self.base[sid] + self.seen[sid] + rank
        self.seen += np.bincount(sid, minlength=self.seen.size)
        return self.piece_parts[np.searchsorted(self.piece_ends, position, side="right")]


class SimpleAssigner:
    """Equal sizes: a shuffled deck of partition numbers (seeded), or contiguous runs."""

    def __init__(self, total: int, n: int, seed: int | None) -> None:
        self.deck: np.ndarray | None = None
        if seed is not None:
            dtype = np.uint16 if n <= np.iinfo(np.uint16).max else np.int32
            self.deck = np.resize(np.arange(n, dtype=dtype), total)  # 0..n-1 repeated, 2 bytes a row
            np.random.default_rng(seed).shuffle(self.deck)
        sizes = [total // n + (1 if p < total % n else 0) for p in range(n)]
        self.ends = np.cumsum(sizes, dtype=np.int64)

    def __call__(self, offset: int, count: int) -> np.ndarray:
        if self.deck is not None:
            return self.deck[offset : offset + count].astype(np.int32)
        rows = np.arange(offset, offset + count, dtype=np.int64)
        return np.searchsorted(self.ends, rows, side="right").astype(np.int32)


class GroupAssigner:
    """Greedy method: whole groups, largest first, onto the least-loaded partition. The group
    column is only read, never converted or written back."""

    def __init__(self, scan: Scan, n: int) -> None:
        assert scan.group_values is not None and scan.group_codes is not None
        sizes, codes = _largest_first(scan.group_values, scan.group_codes)
        bins, _ = pack(sizes, n)
        self.part_of = np.empty(len(sizes), dtype=np.int32)
        self.part_of[codes] = bins
        self.codes = scan.group_codes

    def __call__(self, offset: int, count: int) -> np.ndarray:
        return self.part_of[self.codes[offset : offset + count]]


Assigner = HostAssigner | SimpleAssigner | GroupAssigner


def _make_assigner(cfg: PartitionConfig, scan: Scan, n: int) -> Assigner:
    if cfg.method == "host":
        return HostAssigner(scan, n)
    if cfg.method == "greedy":
        return GroupAssigner(scan, n)
    return SimpleAssigner(scan.total, n, cfg.seed)


# --------------------------------------------------------------------------- writing


@dataclass
class PartFile:
    """One output partition: buffered batches, written to a hidden temp name, renamed at the end."""

    final: Path
    fmt: str
    schema: pa.Schema
    dictionary: list[str] | bool  # parquet use_dictionary
    rows: int = 0
    buffered: int = 0
    buffer: list[pa.RecordBatch] = field(default_factory=list)
    writer: pq.ParquetWriter | pa_csv.CSVWriter | None = None

    @property
    def temp(self) -> Path:
        return self.final.with_name(f".{self.final.name}.tmp-{os.getpid()}")

    def add(self, batch: pa.RecordBatch) -> None:
        self.buffer.append(batch)
        self.buffered += batch.num_rows

    def take_buffer(self) -> pa.Table | None:
        if not self.buffer:
            return None
        table = pa.Table.from_batches(self.buffer, schema=self.schema)
        self.buffer, self.buffered = [], 0
        return table

    def write(self, table: pa.Table) -> None:
        """Runs on the writer thread."""
        self._open().write_table(table)
        self.rows += table.num_rows

    def _open(self) -> pq.ParquetWriter | pa_csv.CSVWriter:
        if self.writer is None:
            if self.fmt == "parquet":
                self.writer = pq.ParquetWriter(
                    self.temp, self.schema, compression="zstd", use_dictionary=self.dictionary
                )
            else:
                self.writer = pa_csv.CSVWriter(str(self.temp), self.schema)
        return self.writer

    def close(self) -> None:
        self._open().close()  # an empty partition still gets a file with the schema

    def commit(self) -> None:
        os.replace(self.temp, self.final)

    def discard(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(OSError, pa.ArrowException):  # already failing; keep the first error
                self.writer.close()
        self.temp.unlink(missing_ok=True)


class PartWriters:
    """All partitions of one run. Encoding and compression run on one background thread (pyarrow
    releases the GIL), so they overlap with reading the next batch; buffered plus queued rows
    stay bounded. One thread keeps each file's writes in order."""

    def __init__(self, folder: Path, n: int, fmt: str, schema: pa.Schema, dictionary: list[str] | bool) -> None:
        self.schema = _output_schema(schema)
        self.files = [PartFile(folder / f"part-{i:05d}.{fmt}", fmt, self.schema, dictionary) for i in range(n)]
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="partition-writer")
        self.queued: deque[tuple[Future[None], int]] = deque()
        self.queued_rows = 0

    def add(self, batch: pa.RecordBatch, part: np.ndarray) -> None:
        # One gather, then contiguous slices per partition; stable sort of uint16 is a radix sort.
        small = part.astype(np.uint16) if len(self.files) <= 1 << 16 else part
        order = np.argsort(small, kind="stable")
        grouped = batch.take(pa.array(order))
        bounds = np.concatenate([[0], np.cumsum(np.bincount(part, minlength=len(self.files)))])
        for p in np.flatnonzero(np.diff(bounds)):
            target = self.files[p]
            target.add(grouped.slice(int(bounds[p]), int(bounds[p + 1] - bounds[p])))
            if target.buffered >= ROW_GROUP_ROWS:
                self._flush(target)
        if sum(f.buffered for f in self.files) >= MAX_BUFFERED_ROWS:
            for f in self.files:
                self._flush(f)

    def _flush(self, target: PartFile) -> None:
        table = target.take_buffer()
        if table is None:
            return
        self.queued.append((self.pool.submit(target.write, table), table.num_rows))
        self.queued_rows += table.num_rows
        while self.queued_rows > MAX_BUFFERED_ROWS:
            self._wait_oldest()

    def _wait_oldest(self) -> None:
        done, rows = self.queued.popleft()
        self.queued_rows -= rows
        done.result()  # re-raises a write error here, in the caller's thread

    def finish(self) -> None:
        """Write and close every file, then make them visible: no rename before all are whole."""
        for f in self.files:
            self._flush(f)
        while self.queued:
            self._wait_oldest()
        self.pool.shutdown()
        for f in self.files:
            f.close()
        for f in self.files:
            f.commit()

    def discard(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        for f in self.files:
            f.discard()


def _dictionary_columns(first: pa.RecordBatch) -> list[str]:
    """Columns worth a parquet dictionary, judged on the first batch. URLs and row numbers are
    unique: building their dictionary is wasted work that parquet then throws away."""
    keep = []
    for name in first.schema.names:
        try:
            distinct = _to_polars(first.column(name)).n_unique()
        except (pl.exceptions.PolarsError, pa.ArrowException):
            distinct = 0  # a type polars cannot count: let parquet decide
        if distinct <= DICTIONARY_MAX_RATIO * first.num_rows:
            keep.append(name)
    return [*keep, "host"]


def _output_schema(first: pa.Schema) -> pa.Schema:
    """The input's columns untouched, plus `row` and `host` where the input lacks them."""
    schema = first
    for name, kind in (("row", pa.int64()), ("host", pa.string())):
        if name not in schema.names:
            schema = schema.append(pa.field(name, kind))
    meta = {k: v for k, v in (schema.metadata or {}).items() if k != b"pandas"}  # its index no longer fits
    return schema.with_metadata(meta)


def _with_host(batch: pa.RecordBatch, schema: pa.Schema, hosts: pa.Array) -> pa.RecordBatch:
    """Append `host` unless the manifest has its own; the other columns pass untouched."""
    columns = list(batch.columns)
    if len(schema) > len(columns):
        columns.append(hosts)
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _raise_fd_limit(n: int) -> None:
    """Every partition keeps a writer open; lift the soft open-file limit when N is large."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 64
    if soft != resource.RLIM_INFINITY and soft < want:
        ceiling = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))


# --------------------------------------------------------------------------- second pass


class PairCounter:
    """Rows per (partition, host code). A dense array of n x hosts counters when that is small,
    else grouped frames merged now and then, so memory follows the distinct pairs."""

    def __init__(self, n: int, n_hosts: int) -> None:
        self.n_hosts = max(1, n_hosts)
        dense = n * self.n_hosts <= DENSE_PAIRS
        self.dense: np.ndarray | None = np.zeros(n * self.n_hosts, dtype=np.int64) if dense else None
        self.frames: list[pl.DataFrame] = []
        self.pending = 0

    def add(self, part: np.ndarray, codes: np.ndarray) -> None:
        key = part.astype(np.int64) * self.n_hosts + codes
        if self.dense is not None:
            self.dense += np.bincount(key, minlength=self.dense.size)
            return
        self.frames.append(pl.DataFrame({"key": key}).group_by("key").len())
        self.pending += self.frames[-1].height
        if self.pending > 4 * BATCH_ROWS:
            self.frames = [self._merged()]
            self.pending = self.frames[0].height

    def _merged(self) -> pl.DataFrame:
        if self.dense is not None:
            key = np.flatnonzero(self.dense)
            return pl.DataFrame({"key": key, "len": self.dense[key]})
        if not self.frames:
            return pl.DataFrame(schema={"key": pl.Int64, "len": pl.Int64})
        return pl.concat(self.frames).group_by("key").agg(pl.col("len").sum())

    def by_host(self, names: pl.Series) -> pl.DataFrame:
        """part, host, len: keys split back into partitions and host names."""
        merged = self._merged()
        part = (merged["key"] // self.n_hosts).cast(pl.Int32)
        hosts = names.gather(merged["key"] % self.n_hosts) if merged.height else pl.Series([], dtype=pl.String)
        return pl.DataFrame({"part": part, "host": hosts, "len": merged["len"].cast(pl.Int64)})


@dataclass
class WriteResult:
    rows: int
    added: list[str]
    host_parts: pl.DataFrame  # part, host, len


def _write(cfg: PartitionConfig, source: Source, scan: Scan, assign: Assigner, n: int, bars: _Bars) -> WriteResult:
    folder = Path(cfg.output_folder)
    folder.mkdir(parents=True, exist_ok=True)
    _raise_fd_limit(n)
    tick = bars.start("writing partitions", scan.total)
    host_dict = scan.host_names.to_arrow().cast(pa.string())
    counter = PairCounter(n, scan.host_names.len())
    writers: PartWriters | None = None
    offset = 0
    try:
        for batch in source.batches():
            count = batch.num_rows
            if offset + count > scan.total:
                raise RuntimeError("the manifest grew while it was being partitioned")
            writers = writers or PartWriters(folder, n, cfg.format, batch.schema, _dictionary_columns(batch))
            codes = scan.host_codes[offset : offset + count]
            part = assign(offset, count)
            writers.add(_with_host(batch, writers.schema, host_dict.take(pa.array(codes))), part)
            counter.add(part, codes)
            offset += count
            tick(count)
        if offset != scan.total:
            raise RuntimeError(f"the manifest changed during partitioning ({scan.total} then {offset} rows)")
        # no rows at all: still one file per partition, with the input's columns
        writers = writers or PartWriters(folder, n, cfg.format, source.empty_schema(), True)
        writers.finish()
    except BaseException:
        if writers is not None:
            writers.discard()
        raise
    added = [c for c in ("row", "host") if c not in source.columns]
    return WriteResult(offset, added, counter.by_host(scan.host_names))


# --------------------------------------------------------------------------- the plan


def _partition_entries(host_parts: pl.DataFrame, n: int, fmt: str) -> list[dict[str, Any]]:
    per_part = (
        host_parts.sort(["part", "len", "host"], descending=[False, True, False])
        .group_by("part", maintain_order=True)
        .agg(
            rows=pl.col("len").sum(),
            hosts=pl.len(),
            largest_host=pl.col("host").first(),
            largest=pl.col("len").first(),
        )
    )
    by_part = {r["part"]: r for r in per_part.iter_rows(named=True)}
    entries = []
    for p in range(n):
        r = by_part.get(p)
        rows = int(r["rows"]) if r else 0
        entries.append(
            {
                "partition": p,
                "file": f"part-{p:05d}.{fmt}",
                "rows": rows,
                "hosts": int(r["hosts"]) if r else 0,
                "largest_host": r["largest_host"] if r else None,
                "largest_host_share": round(int(r["largest"]) / rows, 6) if r else 0.0,
            }
        )
    return entries


def host_shares(host_parts: pl.DataFrame) -> pl.DataFrame:
    """(host, partition, rows, budget_share) for every host found in more than one partition."""
    return (
        host_parts.rename({"part": "partition", "len": "rows"})
        .with_columns(pl.col("rows").cast(pl.Int64))
        .with_columns(host_rows=pl.col("rows").sum().over("host"), spans=pl.len().over("host"))
        .filter(pl.col("spans") > 1)
        .with_columns(budget_share=pl.col("rows") / pl.col("host_rows"))
        .sort(["host_rows", "host", "rows", "partition"], descending=[True, False, True, False])
        .select("host", "partition", "rows", "budget_share", "host_rows")
    )


def _split_hosts(shares: pl.DataFrame, limit: int | None, fmt: str) -> dict[str, Any]:
    top = shares
    if limit is not None:
        keep = shares.select("host").unique(maintain_order=True).head(limit)
        top = shares.join(keep, on="host", how="semi", maintain_order="left")
    out: dict[str, Any] = {}
    for r in top.iter_rows(named=True):
        entry = out.setdefault(r["host"], {"rows": int(r["host_rows"]), "partitions": []})
        entry["partitions"].append(
            {
                "partition": int(r["partition"]),
                "file": f"part-{int(r['partition']):05d}.{fmt}",
                "rows": int(r["rows"]),
                "budget_share": float(r["budget_share"]),
            }
        )
    return out


def _build_plan(
    cfg: PartitionConfig, assign: Assigner, n: int, result: WriteResult, shares: pl.DataFrame
) -> dict[str, Any]:
    n_split = shares["host"].n_unique() if shares.height else 0
    # The host method splits at most ~N hosts, so its list is short and always complete.
    limit = None if cfg.method == "host" else SPLIT_HOSTS_INLINE
    return {
        "method": cfg.method,
        "input": str(cfg.input),
        "url_col": cfg.url_col,
        "group_col": cfg.group_col if cfg.method == "greedy" else None,
        "seed": cfg.seed if cfg.method == "simple" else None,
        "format": cfg.format,
        "total_rows": result.rows,
        "n_partitions": n,
        "rows_per_partition": cfg.rows_per_partition or None,
        "added_columns": result.added,
        "fair_share": assign.cap if isinstance(assign, HostAssigner) else fair_share(result.rows, n),
        "partitions": _partition_entries(result.host_parts, n, cfg.format),
        "split_hosts": _split_hosts(shares, limit, cfg.format),
        "split_hosts_total": n_split,
        "split_hosts_complete": limit is None or n_split <= limit,
        "host_shares_file": HOST_SHARES_FILE,
    }


def _write_plan(folder: Path, plan: dict[str, Any], shares: pl.DataFrame) -> None:
    (folder / "_plan").mkdir(exist_ok=True)
    _atomic(folder / HOST_SHARES_FILE, lambda tmp: shares.write_parquet(tmp))
    _atomic(folder / "plan.json", lambda tmp: tmp.write_text(json.dumps(plan, indent=2) + "\n", "utf-8"))


def _atomic(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _remove_stale(folder: Path, n: int, fmt: str) -> None:
    """Partition files of an earlier run that this plan does not list would mislead distribute."""
    current = {f"part-{i:05d}.{fmt}" for i in range(n)}
    for path in folder.iterdir():
        if PART_NAME.match(path.name) and path.name not in current:
            path.unlink()


# --------------------------------------------------------------------------- progress


class _Bars:
    """tqdm bars on stderr, one per pass; nothing at all when quiet."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def start(self, desc: str, total: int | None) -> Progress:
        self.close()
        if not self.enabled:
            return lambda _k: None
        from tqdm import tqdm

        self.bar = tqdm(
            total=total, desc=f"partition: {desc}", unit="row", unit_scale=True, file=sys.stderr, leave=False
        )
        return self.bar.update

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# --------------------------------------------------------------------------- entry point


def run_partition(cfg: PartitionConfig, progress: bool = True) -> dict[str, Any]:
    """Split cfg.input into partition files and plan.json under cfg.output_folder; return the plan.

    User errors (missing input or column, unreadable file, bad options) raise ConfigError.
    """
    _check_config(cfg)
    source = Source(cfg)
    bars = _Bars(progress and not cfg.quiet)
    try:
        scan = _scan(cfg, source, bars.start("reading hosts", source.num_rows))
        n = _n_partitions(cfg, scan.total)
        assign = _make_assigner(cfg, scan, n)
        result = _write(cfg, source, scan, assign, n, bars)
    finally:
        bars.close()
    for problem in source.manifest.problems():
        log.warning("%s", problem)
    shares = host_shares(result.host_parts)
    plan = _build_plan(cfg, assign, n, result, shares)
    folder = Path(cfg.output_folder)
    _write_plan(folder, plan, shares)
    _remove_stale(folder, n, cfg.format)
    return plan

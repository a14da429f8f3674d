"""One run of a dataset collection: which manifest rows to fetch, given what the dataset already holds.

A dataset at DEST is collected in runs; run <id> writes under DEST/run-<id>/. Before a run, the
manifest as it is now is compared with the dataset index (flowdc.consolidate) by row identity
(flowdc.identity), never by position:
  - rows whose identity the index holds as done (ok, skipped, failed for good) are not fetched;
  - rows that failed transiently are fetched again, under their old row number (so their old key);
  - new rows get row numbers after the largest the dataset ever used (so new keys: nothing is renamed);
  - index entries whose identity is no longer in the manifest are counted as removed (consolidate marks them).
A run stopped midway (cancelled, crashed, killed) is counted from its ledgers: what it stored is not
fetched again, and the rows it planned but never recorded are fetched under the row numbers it gave them.
The rows to fetch go into a run manifest (parquet, with a `row` column that `flowdc download`
honours) and their identities into DEST/run-<id>/_flowdc/rows.parquet, which consolidate reads.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flowdc.consolidate import ROWS_FILE, current_index, planned_rows
from flowdc.errors import ConfigError
from flowdc.identity import base_hashes, number_repeats
from flowdc.ledger import locate
from flowdc.manifest import ROW_COLUMN, Manifest, as_text
from flowdc.storage import Destination

RUN_MANIFEST = "manifest.parquet"


@dataclass
class RunPlan:
    run_id: str
    run_dir: str  # DEST/run-<id> (a path or URL)
    manifest: str  # local path of the run manifest (the rows to fetch), '' when there is nothing to fetch
    rows_total: int  # rows in the manifest now
    rows_new: int
    rows_retry: int
    rows_done: int  # already in the dataset: not fetched
    rows_removed: int  # in the dataset, no longer in the manifest
    current: np.ndarray = field(repr=False)  # identities of the manifest's rows now

    @property
    def rows_to_fetch(self) -> int:
        return self.rows_new + self.rows_retry

    def summary(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "rows_total": self.rows_total, "rows_new": self.rows_new,
                "rows_retry": self.rows_retry, "rows_done": self.rows_done, "rows_removed": self.rows_removed}


def new_run_id() -> str:
    """Sorts by time (consolidate's run order), unique between runs started in the same second."""
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.urandom(3).hex()}"


def manifest_identities(manifest: Manifest, key_col: str | None) -> np.ndarray:
    parts = []
    for batch in manifest.batches():
        urls = as_text(batch.column(manifest.url_column)).to_pylist()
        ids = batch.column(key_col).to_pylist() if key_col else None
        parts.append(base_hashes(urls, ids))
    return number_repeats(np.concatenate(parts) if parts else np.empty(0, np.int64))


def plan_run(manifest_url: str, output: str, work_dir: str, *, url_col: str = "url", key_col: str | None = None,
             input_format: str = "auto", storage_options: dict[str, Any] | None = None,
             input_storage_options: dict[str, Any] | None = None, run_id: str | None = None,
             batch_rows: int = 65536, label_col: str | None = None) -> RunPlan:
    """Compare the manifest with DEST's index and write this run's manifest into `work_dir`. The
    columns are checked here, against the user's manifest: later steps read the run's copy."""
    manifest = Manifest(manifest_url, url_col, input_format, batch_rows, input_storage_options)
    for column, what in ((key_col, "key"), (label_col, "label")):
        if column:
            manifest.require_column(column, what)
    run_id = run_id or new_run_id()
    dest = Destination(output, storage_options)
    current = manifest_identities(manifest, key_col)
    chosen = _select(current, current_index(dest, storage_options), planned_rows(dest))
    fetch, rows = chosen.fetch, chosen.rows
    os.makedirs(work_dir, exist_ok=True)
    path = os.path.join(work_dir, RUN_MANIFEST) if fetch.any() else ""
    if path:
        _write_run_manifest(manifest, fetch, rows, chosen.first_new, path)
        table = pa.table({"row": pa.array(rows, pa.int64()), "ident": pa.array(current[fetch], pa.int64())})
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        dest.write_bytes(f"run-{run_id}/{ROWS_FILE}", buf.getvalue())
    return RunPlan(run_id=run_id, run_dir=dest.url(f"run-{run_id}"), manifest=path, rows_total=int(current.size),
                   rows_new=chosen.new, rows_retry=chosen.retry, rows_removed=chosen.removed,
                   rows_done=int(current.size) - chosen.new - chosen.retry, current=current)


class _Selection(NamedTuple):
    fetch: np.ndarray  # the manifest's rows to fetch, as a mask
    rows: np.ndarray  # their row numbers in the dataset
    first_new: int  # new rows are numbered from here, after every old one
    new: int
    retry: int
    removed: int  # rows of the dataset no longer in the manifest


def _select(current: np.ndarray, index: pl.DataFrame | None, planned: pl.DataFrame | None = None) -> _Selection:
    """Which of the manifest's rows (their identities, `current`) this run fetches: the new ones
    and those that failed retryably, compared with DEST's index; and those an earlier run planned
    (`planned`: ident, row) but never recorded, under the row it gave them."""
    if index is None:
        index = pl.DataFrame(schema={"ident": pl.Int64, "row": pl.Int64, "status": pl.String,
                                     "retryable": pl.Boolean, "removed": pl.Boolean})
    if planned is None:
        planned = pl.DataFrame(schema={"ident": pl.Int64, "row": pl.Int64})
    in_index, (status, retryable, old_rows) = _look_up(current, index["ident"].to_numpy(), [
        index["status"].to_numpy(), index["retryable"].fill_null(False).to_numpy(), index["row"].to_numpy()])
    unrecorded = planned.filter(~pl.col("ident").is_in(index["ident"].implode()))
    was_planned, (planned_row,) = _look_up(current, unrecorded["ident"].to_numpy(), [unrecorded["row"].to_numpy()])
    retry = (in_index & (status == "failed") & retryable) | (~in_index & was_planned)
    new = ~in_index & ~was_planned
    rows = np.where(in_index, old_rows, planned_row).astype(np.int64)
    used = [int(x) for x in (index["row"].max(), planned["row"].max()) if x is not None]
    next_row = max(used) + 1 if used else 0
    rows[new] = next_row + np.arange(int(new.sum()), dtype=np.int64)
    fetch = new | retry
    gone = ~np.isin(index["ident"].to_numpy(), current) & ~index["removed"].fill_null(False).to_numpy()
    return _Selection(fetch, rows[fetch], next_row, int(new.sum()), int(retry.sum()), int(gone.sum()))


def _look_up(current: np.ndarray, keys: np.ndarray, columns: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """For each identity in `current`: whether `keys` holds it, and the `columns` at its place
    (meaningless where it is not held)."""
    if keys.size == 0:
        return np.zeros(current.size, bool), [np.zeros(current.size, c.dtype) for c in columns]
    order = np.argsort(keys)
    pos, found = locate(keys[order], current)
    at = order[pos]
    return found, [c[at] for c in columns]


def _write_run_manifest(manifest: Manifest, fetch: np.ndarray, rows: np.ndarray, first_new: int, path: str) -> None:
    """The manifest's rows to fetch, every column kept, `row` set to their dataset row numbers, in
    increasing order (as the download requires of a `row` column). New rows are numbered from
    `first_new` in manifest order, so they stream through a file of their own; retried rows keep
    their old numbers, in any order, so they are held and sorted (a run retries few rows)."""
    retried: list[pa.Table] = []
    start = taken = 0
    new_part = _ParquetAppender(f"{path}.new-{os.getpid()}")
    out = _ParquetAppender(f"{path}.tmp-{os.getpid()}")
    try:
        for batch in manifest.batches():
            mask = fetch[start:start + batch.num_rows]
            start += batch.num_rows
            if not mask.any():
                continue
            chosen = batch.filter(pa.array(mask))
            chosen = chosen.drop_columns([ROW_COLUMN]) if ROW_COLUMN in chosen.schema.names else chosen
            numbers = rows[taken:taken + chosen.num_rows]
            taken += chosen.num_rows
            table = pa.Table.from_batches([chosen.append_column(ROW_COLUMN, pa.array(numbers, pa.int64()))])
            old = pa.array(numbers < first_new)
            retried.append(table.filter(old))
            new_part.write(table.filter(pc.invert(old)))
        if start != fetch.size:
            raise ConfigError(f"{manifest.path} changed while it was read; run again")
        new_part.close()
        if retried:
            out.write(pa.concat_tables(retried, promote_options="permissive").sort_by(ROW_COLUMN))
        for group in new_part.read_back():
            out.write(group)
        out.close()
        os.replace(out.path, path)
    finally:
        for part in (new_part, out):
            part.discard()


class _ParquetAppender:
    """A parquet file written table by table (the first non-empty one sets the schema)."""

    def __init__(self, path: str):
        self.path = path
        self.schema: pa.Schema | None = None  # set by the first rows written
        self._writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        if self._writer is None:
            self.schema = table.schema
            self._writer = pq.ParquetWriter(self.path, table.schema, compression="zstd")
        elif table.schema != self.schema:
            table = table.cast(self.schema)
        self._writer.write_table(table)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def read_back(self) -> Iterator[pa.Table]:
        if self.schema is None:
            return
        part = pq.ParquetFile(self.path)
        for i in range(part.num_row_groups):
            yield part.read_row_group(i)

    def discard(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)

"""Consolidate: every partition ledger of a dataset -> one dataset index (parquet) and a dataset overview.

The layouts understood under DEST (a folder or an fsspec URL):
  DEST/_flowdc/ledger/                          one `flowdc download` output
  DEST/part-NNNNN/_flowdc/ledger/               the partitions of `flowdc distribute`
  DEST/run-<id>/part-NNNNN/_flowdc/ledger/      the partitions of one collect-dataset run (a refresh)
  DEST/run-<id>/_flowdc/rows.parquet            (row, ident) of that run's manifest, when the flow wrote it

The index holds one entry per row identity (flowdc.identity): its latest state over all runs, where
its sample is (path, and for webdataset the tar member), and whether the row has left the manifest
(`removed`; its data stays). The ledgers stay the source of truth: the index is rebuilt from them
every time and replaced atomically, so readers see the old index or the new one, never a mix.
"""

from __future__ import annotations

import io
import json
import re
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from flowdc.engines.dest import PLAN_RECORD
from flowdc.errors import DestinationError, UserError
from flowdc.identity import base_hashes, number_repeats
from flowdc.ledger import LEDGER_DIR, Ledger
from flowdc.localfiles import local_folder_problem
from flowdc.overview import OVERVIEW_FILE
from flowdc.storage import Destination, is_destination_error
from flowdc.urls import redact_url

INDEX_FILE = "_flowdc/index.parquet"
DATASET_FILE = "dataset.json"
ROWS_FILE = "_flowdc/rows.parquet"  # inside a run folder: the run manifest's (row, ident)
PART_DIR = re.compile(r"^part-(\d{5,})$")
RUN_DIR = re.compile(r"^run-([A-Za-z0-9][A-Za-z0-9_.\-]*)$")
HOSTS_LISTED = 10
LEDGER_COLUMNS = ["row", "key", "url", "label", "status", "reason", "retryable", "http_status", "bytes", "sha256",
                  "path", "attempts", "host", "ttfb_ms", "ts", "ident"]
INDEX_SCHEMA = pa.schema([
    ("ident", pa.int64()), ("key", pa.string()), ("row", pa.int64()), ("url", pa.string()), ("label", pa.string()),
    ("run_id", pa.string()), ("partition", pa.int32()), ("path", pa.string()), ("member", pa.string()),
    ("sha256", pa.string()), ("bytes", pa.int64()), ("status", pa.string()), ("reason", pa.string()),
    ("retryable", pa.bool_()), ("http_status", pa.int32()), ("host", pa.string()), ("ttfb_ms", pa.float32()),
    ("attempts", pa.int16()), ("fetched_at", pa.timestamp("ms", tz="UTC")), ("removed", pa.bool_()),
    ("removed_in_run", pa.string()),
])


@dataclass(frozen=True)
class PartOutput:
    """One flowdc output inside the dataset: `rel` is its folder under DEST ('' for DEST itself)."""

    rel: str
    run_id: str | None
    partition: int | None


def sub_destination(dest: Destination, rel: str, storage_options: dict[str, Any] | None = None) -> Destination:
    return Destination(dest.url(rel), storage_options) if rel else dest


def find_outputs(dest: Destination) -> list[PartOutput]:
    """Every flowdc output under DEST, in a stable order (DEST itself, partitions, runs by id)."""
    found: list[PartOutput] = []
    if dest.list(LEDGER_DIR):
        found.append(PartOutput("", None, None))
    for name in dest.list():
        if m := PART_DIR.match(name):
            if dest.list(f"{name}/{LEDGER_DIR}"):
                found.append(PartOutput(name, None, int(m.group(1))))
        elif m := RUN_DIR.match(name):
            for sub in dest.list(name):
                if (p := PART_DIR.match(sub)) and dest.list(f"{name}/{sub}/{LEDGER_DIR}"):
                    found.append(PartOutput(f"{name}/{sub}", m.group(1), int(p.group(1))))
    return found


def read_part(dest: Destination, part: PartOutput, storage_options: dict[str, Any] | None = None) -> pl.DataFrame:
    """A partition's latest ledger records, with where each sample is relative to DEST."""
    ledger = Ledger(sub_destination(dest, part.rel, storage_options))
    frame = pl.from_arrow(ledger.latest(LEDGER_COLUMNS))
    assert isinstance(frame, pl.DataFrame)
    frame = frame.with_columns(pl.col(pl.Categorical).cast(pl.String)).rename({"ident": "ledger_ident"})
    prefix = f"{part.rel}/" if part.rel else ""
    # webdataset records `NNNNNN.tar:KEY.EXT`; imagefolder paths never hold ":" (label_folder replaces it).
    shard_path = pl.col("path").str.split_exact(":", 1)
    return frame.with_columns(
        run_id=pl.lit(part.run_id, pl.String),
        partition=pl.lit(part.partition, pl.Int32),
        member=shard_path.struct.field("field_1"),
        path=pl.when(pl.col("path").is_null()).then(None)
        .otherwise(pl.lit(prefix) + shard_path.struct.field("field_0")),
    )


def _idents(dest: Destination, records: pl.DataFrame, run_ids: list[str]) -> pl.DataFrame:
    """Attach each record's identity: from its run's rows file when there is one, else as its ledger
    recorded it, else from its URL (in row order over all such records, so repeats number as in
    the manifest)."""
    plans = run_plans(dest, run_ids)
    if plans is not None:
        records = records.join(plans, on=["run_id", "row"], how="left", coalesce=True)
    else:
        records = records.with_columns(ident=pl.lit(None, pl.Int64))
    # A run's rows file numbers repeats over the whole manifest; a ledger over its own partition.
    records = records.with_columns(ident=pl.coalesce("ident", "ledger_ident")).drop("ledger_ident")
    missing = records.filter(pl.col("ident").is_null())
    if missing.height:
        missing = missing.sort("row", maintain_order=True)
        found = number_repeats(base_hashes(missing["url"].to_list()))
        records = pl.concat([records.filter(pl.col("ident").is_not_null()),
                             missing.with_columns(ident=pl.Series(found, dtype=pl.Int64))])
    return records


def build_index(dest: Destination, parts: list[PartOutput], current: np.ndarray | None, run_label: str | None,
                storage_options: dict[str, Any] | None = None,
                progress: bool = False) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(index, every partition's latest records): the index keeps each identity's latest state."""
    from tqdm import tqdm

    frames = []
    # On a terminal only, and gone before anything else is said (an error is one line).
    shown = progress and len(parts) > 1 and sys.stderr.isatty()
    with tqdm(total=len(parts), desc="reading ledgers", unit="output", disable=not shown, file=sys.stderr,
              leave=False) as bar:
        for part in parts:
            frames.append(read_part(dest, part, storage_options))
            bar.update()
    frames = [f for f in frames if f.height]
    if not frames:
        empty = pl.from_arrow(INDEX_SCHEMA.empty_table())
        assert isinstance(empty, pl.DataFrame)
        return empty, empty
    records = pl.concat(frames, how="diagonal_relaxed")
    run_ids = sorted({p.run_id for p in parts if p.run_id})
    records = _idents(dest, records, run_ids)
    # Latest state per identity over all runs; an ok wins a tie (nothing is fetched after an ok).
    index = (records.with_columns(_ok=pl.col("status") == "ok")
             .sort(["ident", "ts", "_ok"]).unique(subset="ident", keep="last", maintain_order=True)
             .drop("_ok"))
    index = _mark_removed(dest, index, current, run_label)
    index = index.with_columns(fetched_at=pl.from_epoch((pl.col("ts") * 1000).cast(pl.Int64), time_unit="ms")
                               .dt.replace_time_zone("UTC"))
    index = index.sort(["run_id", "partition", "row"], nulls_last=False)
    return index.select(INDEX_SCHEMA.names), records


def _mark_removed(dest: Destination, index: pl.DataFrame, current: np.ndarray | None,
                  run_label: str | None) -> pl.DataFrame:
    """Rows no longer in the manifest stay in the index, marked. A mark keeps the run that first
    missed the row; without the current manifest's identities, earlier marks are kept as they were."""
    before = read_index(dest)
    if before is not None and before.height:
        before = before.filter(pl.col("removed")).select("ident", pl.col("removed_in_run").alias("_was"))
        index = index.join(before, on="ident", how="left")
    else:
        index = index.with_columns(_was=pl.lit(None, pl.String))
    if current is None:
        return index.with_columns(removed=pl.col("_was").is_not_null(), removed_in_run=pl.col("_was")).drop("_was")
    gone = ~pl.Series(np.isin(index["ident"].to_numpy(), current))
    label = run_label or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return index.with_columns(removed=gone).with_columns(
        removed_in_run=pl.when(pl.col("removed")).then(pl.coalesce(pl.col("_was"), pl.lit(label))).otherwise(None)
    ).drop("_was")


def current_index(dest: Destination, storage_options: dict[str, Any] | None = None) -> pl.DataFrame | None:
    """The dataset index as the ledgers have it now, or None when DEST holds no output yet. The
    index last written misses a run that was stopped, cancelled or crashed before its consolidate."""
    parts = find_outputs(dest)
    if not parts:
        return read_index(dest)
    return build_index(dest, parts, None, None, storage_options)[0]


def run_plans(dest: Destination, run_ids: list[str]) -> pl.DataFrame | None:
    """(row, ident, run_id) of the runs' rows files (what each run planned), in `run_ids` order; None
    when none has one."""
    maps = []
    for run_id in run_ids:
        rel = f"run-{run_id}/{ROWS_FILE}"
        if dest.exists(rel):
            rows = pl.read_parquet(io.BytesIO(dest.read_bytes(rel)), columns=["row", "ident"])
            maps.append(rows.with_columns(run_id=pl.lit(run_id, pl.String)))
    return pl.concat(maps) if maps else None


def planned_rows(dest: Destination) -> pl.DataFrame:
    """(ident, row) of every row an earlier run planned to fetch, the latest run's plan per identity."""
    plans = run_plans(dest, sorted(m.group(1) for name in dest.list() if (m := RUN_DIR.match(name))))
    if plans is None:
        return pl.DataFrame({"ident": [], "row": []}, schema={"ident": pl.Int64, "row": pl.Int64})
    return plans.select("ident", "row").unique(subset="ident", keep="last", maintain_order=True)


def read_index(dest: Destination) -> pl.DataFrame | None:
    """The dataset index as last written, or None."""
    if not dest.exists(INDEX_FILE):
        return None
    return pl.read_parquet(io.BytesIO(dest.read_bytes(INDEX_FILE)))


def write_index(dest: Destination, index: pl.DataFrame) -> None:
    table = index.to_arrow().cast(INDEX_SCHEMA)
    with dest.open_atomic(INDEX_FILE) as fh:
        pq.write_table(table, fh, compression="zstd")


def _counts(frame: pl.DataFrame) -> dict[str, int]:
    counts = {s: 0 for s in ("ok", "failed", "skipped")}
    for status, n in frame.group_by("status").len().iter_rows():
        counts[status] = n
    return {"rows": frame.height, **counts}


def _partition_table(dest: Destination, parts: list[PartOutput], records: pl.DataFrame) -> list[dict[str, Any]]:
    """Each partition's own figures (its ledger and overview.json), as its ledger has them."""
    rows = []
    for part in parts:
        mine = records.filter(pl.col("run_id").eq_missing(part.run_id) & pl.col("partition").eq_missing(part.partition))
        figures = _counts(mine)
        ov = dest.read_json(f"{part.rel}/{OVERVIEW_FILE}" if part.rel else OVERVIEW_FILE)
        rows.append({
            "run_id": part.run_id, "partition": part.partition, "folder": part.rel or ".",
            **figures, "bytes": int(mine["bytes"].sum() or 0),
            "success_rate": round(figures["ok"] / figures["rows"], 6) if figures["rows"] else 0.0,
            "elapsed_s": ov.get("elapsed_s"), "images_per_s": ov.get("images_per_s"),
        })
    return rows


def _host_tables(dest: Destination, parts: list[PartOutput], index: pl.DataFrame) -> dict[str, list[dict[str, Any]]]:
    """The slowest hosts (median time to first byte) and the most throttled (429/503 refusals
    counted by the controller over every partition, and final 429/503 failures)."""
    fetched = index.filter(pl.col("host").is_not_null())
    slow = (fetched.group_by("host").agg(rows=pl.len(), ok=(pl.col("status") == "ok").sum(),
                                         ttfb_median_ms=pl.col("ttfb_ms").median())
            .filter(pl.col("ttfb_median_ms").is_not_null())
            .sort(["ttfb_median_ms", "host"], descending=[True, False]).head(HOSTS_LISTED))
    refused: dict[str, dict[str, int]] = {}
    for part in parts:
        ov = dest.read_json(f"{part.rel}/{OVERVIEW_FILE}" if part.rel else OVERVIEW_FILE)
        for host, figures in (ov.get("hosts") or {}).items():
            ctl = figures.get("controller") or {}
            entry = refused.setdefault(host, {"refusals": 0, "requests": 0})
            entry["refusals"] += int(ctl.get("n_429_503", 0) or 0)
            entry["requests"] += int(ctl.get("requests", 0) or 0)
    finals = (fetched.filter(pl.col("http_status").is_in([429, 503]) & (pl.col("status") != "ok"))
              .group_by("host").len().iter_rows())
    for host, n in finals:
        refused.setdefault(host, {"refusals": 0, "requests": 0})["failed_429_503"] = n
    throttled = sorted(
        ({"host": h, "refusals": v["refusals"], "requests": v["requests"], "failed_429_503": v.get("failed_429_503", 0)}
         for h, v in refused.items() if v["refusals"] or v.get("failed_429_503")),
        key=lambda r: (-r["refusals"], -r["failed_429_503"], r["host"]))[:HOSTS_LISTED]
    return {"slowest": [_clean(r) for r in slow.to_dicts()], "most_throttled": throttled}


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}


def planned_partitions(dest: Destination) -> dict[str, int]:
    """Partition folder -> rows, of the distribute plan recorded in DEST (empty when none is)."""
    recorded = dest.read_json(PLAN_RECORD).get("partitions")
    if not isinstance(recorded, dict):
        return {}
    return {name: entry["rows"] for name, entry in sorted(recorded.items())
            if PART_DIR.match(name) and isinstance(entry, dict) and isinstance(entry.get("rows"), int)}


def unfinished_partitions(planned: dict[str, int], records: pl.DataFrame) -> list[dict[str, Any]]:
    """The planned partitions whose ledgers hold fewer rows than the plan gave them (none at all:
    never started, or their folder is gone)."""
    mine = records.filter(pl.col("run_id").is_null() & pl.col("partition").is_not_null()) if records.height else records
    recorded = dict(mine.group_by("partition").len().iter_rows()) if mine.height else {}
    unfinished = []
    for name, rows in planned.items():
        have = recorded.get(int(name.removeprefix("part-")), 0)
        if have < rows:
            unfinished.append({"folder": name, "planned": rows, "recorded": have})
    return unfinished


def unrecorded_run_rows(dest: Destination, index: pl.DataFrame) -> int:
    """Rows the collect-dataset runs planned (their rows files) that no ledger records: a run
    stopped before it fetched them. The next run fetches them."""
    planned = planned_rows(dest)
    return planned.height - planned.join(index.select("ident"), on="ident", how="semi").height


def dataset_overview(dest: Destination, parts: list[PartOutput], index: pl.DataFrame,
                     records: pl.DataFrame) -> dict[str, Any]:
    present = index.filter(~pl.col("removed")) if index.height else index
    totals = _counts(present)
    planned = planned_partitions(dest)
    unfinished = unfinished_partitions(planned, records)
    if planned:
        totals["planned"] = sum(planned.values())
    not_recorded = sum(p["planned"] - p["recorded"] for p in unfinished) + unrecorded_run_rows(dest, index)
    errors = (present.filter(pl.col("status") != "ok").with_columns(pl.col("reason").fill_null("unknown"))
              .group_by("reason").len().sort(["len", "reason"], descending=[True, False]))
    runs = sorted({p.run_id for p in parts if p.run_id})
    return {
        "tool": "flowdc",
        "kind": "dataset",
        "output": dest.display,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "index": dest.url(INDEX_FILE),
        "runs": runs,
        "totals": {**totals, "removed": index.height - present.height, "entries": index.height,
                   "not_recorded": not_recorded},
        "success_rate": round(totals["ok"] / totals["rows"], 6) if totals["rows"] else 0.0,
        "unfinished": unfinished,
        "bytes": int(present.filter(pl.col("status") == "ok")["bytes"].sum() or 0),
        "errors": dict(errors.iter_rows()),
        "partitions": _partition_table(dest, parts, records),
        "hosts": _host_tables(dest, parts, index),
    }


def consolidate(output: str, storage_options: dict[str, Any] | None = None, *, current: np.ndarray | None = None,
                run_label: str | None = None, progress: bool = False) -> dict[str, Any]:
    """Rebuild DEST's index and dataset.json from its ledgers; returns the dataset overview.

    `current`: the identities of the manifest as it is now; index entries outside it are marked
    removed (in run `run_label`). None keeps the marks of the last index.
    """
    problem = local_folder_problem(output)
    if problem:
        raise UserError(f"{output} {problem} (consolidate takes the dataset's folder)")
    try:
        dest = Destination(output, storage_options)
        parts = find_outputs(dest)
        if not parts and not dest.exists(INDEX_FILE):
            raise UserError(f"no flowdc output under {dest.display} (no _flowdc/ledger in it, its part-NNNNN/ "
                            "or run-ID/part-NNNNN/ folders)")
        index, records = build_index(dest, parts, current, run_label, storage_options, progress)
        write_index(dest, index)
        overview = dataset_overview(dest, parts, index, records)
        dest.write_bytes(DATASET_FILE, json.dumps(overview, indent=2, default=str).encode())
    except Exception as exc:
        if not is_destination_error(exc):
            raise
        # As a download words a store it cannot reach: one line, exit 1 (a rerun may work).
        where = redact_url(output) if "://" in output else output
        raise DestinationError(f"cannot read {where}: {type(exc).__name__}: {exc}") from None
    return overview

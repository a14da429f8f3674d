"""A sample's metadata as img2dataset writes it, as a superset: its field names, plus ours.

Tools written for img2dataset read `status == "success"`, `error_message`, `width`, `height`,
`original_width`, `original_height`, `caption` and `sha256` from each sample's .json and each
shard's parquet; flowdc writes those names with the same meanings and keeps its own beside them
(`http_status`, `label`, `size`, `row`, `image_format`, the manifest's other columns), and the
original FLOW-DC's `class_name`. A manifest column with one of these names is not overwritten: it
is kept under `manifest`. The mapping is written down in docs/outputs.md.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from flowdc.imagesig import NOT_DECODABLE
from flowdc.ledger import Record

# img2dataset's status words; a row flowdc skipped (no URL, a duplicate) is ours: "skipped".
SUCCESS, FAILED_TO_DOWNLOAD, FAILED_TO_RESIZE, SKIPPED = "success", "failed_to_download", "failed_to_resize", "skipped"
# img2dataset counts a body its resizer could not decode as failed_to_resize; so do we.
_AFTER_DOWNLOAD = frozenset({NOT_DECODABLE})


def img2dataset_status(rec: Record) -> str:
    if rec.status == "ok":
        return SUCCESS
    if rec.status == "skipped":
        return SKIPPED
    return FAILED_TO_RESIZE if rec.reason in _AFTER_DOWNLOAD else FAILED_TO_DOWNLOAD


def sample_meta(rec: Record, extra: dict[str, Any]) -> dict[str, Any]:
    """The .json of a sample (and its row in the shard parquet); `extra`: the manifest's other columns.
    A manifest column named like one of our fields keeps its value under MANIFEST (kept_apart())."""
    doc = {
        **extra,
        "key": rec.key, "url": rec.url, "caption": rec.label, "label": rec.label, "class_name": rec.label,
        "status": img2dataset_status(rec), "error_message": rec.reason,
        "width": rec.width, "height": rec.height,
        # Not resized: the original size is the size.
        "original_width": rec.original_width or rec.width, "original_height": rec.original_height or rec.height,
        "exif": None, "sha256": rec.sha256,
        "http_status": rec.http_status, "size": rec.bytes, "row": rec.row, "image_format": rec.image_format,
        "duplicate_of": rec.duplicate_of,
    }  # fmt: skip
    # Sizes tell whether a name was shared, without a look-up per column: this runs for every sample.
    if len(doc) < len(extra) + len(FIELDS):
        doc[MANIFEST] = {name: value for name, value in extra.items() if name in FIELDS or name == MANIFEST}
    return doc


MANIFEST = "manifest"  # where manifest columns named like our fields are kept, so no value is lost
FIELDS: frozenset[str] = frozenset()  # our field names, read from sample_meta itself (empty, it nests nothing)
FIELDS = frozenset(sample_meta(Record(0, "", "", "ok"), {}))
# Each field's type in a shard's parquet, whatever that shard's rows hold. Inferred from the values,
# a shard with no failure had a null-typed error_message and the next one a string: readers of every
# shard at once (pyarrow, pandas, polars, datasets) refuse that mix.
FIELD_TYPES: dict[str, pa.DataType] = {
    "key": pa.string(), "url": pa.string(), "caption": pa.string(), "label": pa.string(), "class_name": pa.string(),
    "status": pa.string(),
    "error_message": pa.string(), "width": pa.int64(), "height": pa.int64(), "original_width": pa.int64(),
    "original_height": pa.int64(), "exif": pa.string(), "sha256": pa.string(), "http_status": pa.int64(),
    "size": pa.int64(), "row": pa.int64(), "image_format": pa.string(), "duplicate_of": pa.string(),
}  # fmt: skip


def meta_types(manifest_types: Mapping[str, pa.DataType]) -> dict[str, pa.DataType]:
    """The type of each column of a shard's parquet: the manifest's other columns as the manifest
    declares them (`manifest_types`), ours fixed, and those kept apart as one struct under MANIFEST."""
    types = {**manifest_types, **FIELD_TYPES}
    apart = kept_apart(list(manifest_types))
    if apart:
        types[MANIFEST] = pa.struct([pa.field(name, manifest_types[name]) for name in apart])
    return types


def kept_apart(columns: list[str]) -> list[str]:
    """The manifest columns a sample's .json keeps under MANIFEST instead of at the top level (a
    column named MANIFEST goes with them only when another one does)."""
    shared = [c for c in columns if c in FIELDS]
    return [*shared, *(c for c in columns if c == MANIFEST)] if shared else []


class ShardStats:
    """What one shard saw, for NNNNNN_stats.json: img2dataset's counts and timing, plus ours."""

    def __init__(self) -> None:
        self.start_time = time.time()
        self.statuses: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.bytes = 0

    def add(self, meta: dict[str, Any]) -> None:
        self.statuses[meta["status"]] += 1
        if meta["status"] == SUCCESS:
            self.bytes += meta.get("size") or 0
        # img2dataset's status_dict counts "success" beside each error message.
        self.errors[meta.get("error_message") or (SUCCESS if meta["status"] == SUCCESS else "unknown")] += 1

    def to_dict(self) -> dict[str, Any]:
        end = time.time()
        return {
            "count": sum(self.statuses.values()),
            "successes": self.statuses[SUCCESS],
            "failed_to_download": self.statuses[FAILED_TO_DOWNLOAD],
            "failed_to_resize": self.statuses[FAILED_TO_RESIZE],
            "skipped": self.statuses[SKIPPED],
            "duration": end - self.start_time, "start_time": self.start_time, "end_time": end,
            "status_dict": dict(self.errors.most_common()),
            "bytes": self.bytes,
        }  # fmt: skip

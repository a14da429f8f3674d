"""Picks the writer for an output_format (kept apart from base.py, which every writer imports)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pyarrow as pa

from flowdc.ledger import Ledger
from flowdc.storage import Destination
from flowdc.writers.base import SampleWriter


def make_writer(output_format: str, dest: Destination, ledger: Ledger, *, labelled: bool,
                samples_per_shard: int, on_shard_commit: Callable[[int], None] | None = None,
                shard_max_seconds: float = 60.0, image_key: str = "auto", shard_prefix: str = "",
                on_stored: Callable[[str, bytes], None] | None = None,
                manifest_types: Mapping[str, pa.DataType] | None = None) -> SampleWriter:
    """`manifest_types`: the types of the manifest columns a sample's metadata carries."""
    if output_format == "webdataset":
        from flowdc.samplemeta import meta_types
        from flowdc.writers.webdataset import WebDatasetWriter

        return WebDatasetWriter(dest, ledger, samples_per_shard, on_shard_commit, shard_max_seconds, image_key,
                                shard_prefix, meta_types(manifest_types or {}))
    from flowdc.writers.imagefolder import ImageFolderWriter

    return ImageFolderWriter(dest, ledger, labelled=labelled, on_stored=on_stored)

"""webdataset tar shards: NNNNNN.tar with KEY.EXT + KEY.json per sample, and NNNNNN.parquet beside it.

A shard becomes part of the dataset in three steps: its tar is completed under its final name,
its metadata parquet is written, and then its ledger part is committed. On restart, a tar or
parquet without a ledger part is an orphan of a killed run and is removed; its samples were never
recorded as ok, so they are fetched again: nothing is lost and nothing is stored twice.
When a commit fails, any of the three may still have reached the store (a connection can break
after the store took a write), so the shard is removed again before any later shard commits.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Callable
from contextlib import ExitStack, suppress
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from flowdc.ledger import Ledger, Record
from flowdc.storage import Destination
from flowdc.writers.base import StoredSample, StoreError
from flowdc.writers.tarstream import TarStream

_SAMPLE_ENCODER = json.JSONEncoder(default=str)  # built once: it is per sample
SHARD_FILE = re.compile(r"^(\d{6})\.(tar|parquet)$")


def shard_name(shard: int, ext: str) -> str:
    return f"{shard:06d}.{ext}"


def sample_json(rec: Record, meta: dict[str, Any]) -> dict[str, Any]:
    return {**meta, "key": rec.key, "url": rec.url, "label": rec.label, "sha256": rec.sha256,
            "size": rec.bytes, "status": rec.http_status, "row": rec.row}


class WebDatasetWriter:
    def __init__(self, dest: Destination, ledger: Ledger, samples_per_shard: int,
                 on_commit: Callable[[int], None] | None = None):
        self.on_commit = on_commit  # e.g. ship the shard to a remote store
        self.dest = dest
        self.ledger = ledger
        self.samples_per_shard = samples_per_shard
        self.next_shard = 0
        self._shard: int | None = None
        self._stack: ExitStack | None = None  # holds the open shard file until commit or abort
        self._tar: TarStream | None = None  # the open shard's archive
        self._tar_name = ""
        self._records: list[Record] = []
        self._metas: list[dict[str, Any]] = []
        self._doubtful: set[int] = set()  # shards whose commit failed: maybe partly or wholly stored

    def recover(self) -> dict[str, int]:
        committed = self.ledger.committed_shards()
        removed = 0
        seen = set(committed)
        for name in self.dest.list():
            m = SHARD_FILE.match(name)
            if not m:
                continue
            shard = int(m.group(1))
            seen.add(shard)
            if shard not in committed:
                self.dest.remove(name)
                removed += 1
        self.next_shard = max(seen) + 1 if seen else 0
        return {"orphan_shard_files_removed": removed, "temporaries_removed": self.dest.remove_temporaries()}

    def write(self, sample: StoredSample) -> None:
        try:
            self._append(sample)
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
        media = rec.key + sample.ext
        rec.path = f"{self._tar_name}:{media}"
        meta_doc = sample_json(rec, sample.meta)
        now = int(time.time())
        self._tar.add(media, sample.body, now)
        self._tar.add(rec.key + ".json", _SAMPLE_ENCODER.encode(meta_doc).encode(), now)
        self._records.append(rec)
        self._metas.append(meta_doc)
        if len(self._records) >= self.samples_per_shard:
            self._commit_shard()

    def close(self) -> None:
        if self._tar is not None:
            try:
                self._commit_shard()
            except Exception as exc:
                lost = self._records
                self.abort()
                if self._doubtful:
                    raise  # not a StoreError: a shard may be half in place, so record nothing more
                raise StoreError(exc, lost) from exc
        self._remove_doubtful()
        self.ledger.flush()

    def abort(self) -> None:
        """Drop the open shard without committing it: its samples were never recorded as ok."""
        stack, self._stack = self._stack, None
        if stack is not None:
            # The storage already failed; abandoning the upload is the point, so its errors are moot.
            with suppress(Exception):
                stack.__exit__(RuntimeError, RuntimeError("shard aborted"), None)
        self._reset()

    def _open_shard(self) -> None:
        self._shard = self.next_shard
        self.next_shard += 1
        self._stack = ExitStack()
        self._tar_name = shard_name(self._shard, "tar")
        self._tar = TarStream(self._stack.enter_context(self.dest.open_atomic(self._tar_name)))

    def _commit_shard(self) -> None:
        assert self._tar is not None and self._stack is not None and self._shard is not None
        # The samples of a failed commit are fetched again: its shard must be gone before they
        # can be committed a second time. Raises (so this shard is lost too) while the store is down.
        self._remove_doubtful()
        stack, self._stack = self._stack, None
        shard = self._shard
        try:
            self._tar.finish()
            stack.close()  # closes the file: now visible under its final name
            table = pa.Table.from_pylist(self._metas)
            buf = io.BytesIO()
            pq.write_table(table, buf)
            self.dest.write_bytes(shard_name(shard, "parquet"), buf.getvalue())
            self.ledger.commit_shard(shard, self._records)
        except Exception:
            self._doubtful.add(shard)
            with suppress(Exception):  # the store is failing; the next commit or close() tries again
                self._remove_doubtful()
            raise
        self._reset()
        if self.on_commit is not None:
            self.on_commit(shard)

    def _remove_doubtful(self) -> None:
        """Remove every file of the shards whose commit failed, the ledger part first, so that a
        shard is never committed without its files; raises if the store still fails."""
        for shard in sorted(self._doubtful):
            self.ledger.uncommit_shard(shard)
            self.dest.remove(shard_name(shard, "parquet"))
            self.dest.remove(shard_name(shard, "tar"))
            self._doubtful.discard(shard)

    def _reset(self) -> None:
        self._tar = None
        self._stack = None
        self._shard = None
        self._records = []
        self._metas = []

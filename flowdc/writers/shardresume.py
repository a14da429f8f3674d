"""Reading back what a killed run left of its open local shard, so the next run can keep appending.

An appended shard is written as `.PREFIXNNNNNN.tar.open` (hidden: readers never see a shard that
is not whole; its name follows the shard's, see shardnames.py). Its samples reach the ledger only
after their members were handed to the file, in the order they were written, so the samples the
ledger records are a prefix of the file's samples.
A rerun cuts the file back to the end of that prefix and appends after it.
"""

from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from flowdc.ledger import Ledger, Record


@dataclass
class RecordedPrefix:
    """The samples of a shard file that the ledger holds as ok, read from the file."""

    end: int = 0  # bytes of the file they take (the rest is cut off)
    metas: list[dict[str, Any]] = field(default_factory=list)  # each sample's .json member, in order
    names: set[str] = field(default_factory=set)  # their media members


def recorded_in_shards(ledger: Ledger, shards: set[int]) -> dict[int, list[Record]]:
    """The ok records (latest state) the ledger holds for each of these shards."""
    if not shards:
        return {}
    cols = ["row", "key", "url", "url_hash", "label", "status", "shard", "path", "ts", "ident"]
    table = ledger.latest(cols)
    if table.num_rows == 0:
        return {}
    keep = pc.and_(pc.equal(table["status"], "ok"), pc.is_in(table["shard"], pa.array(sorted(shards), pa.int32())))
    found: dict[int, list[Record]] = {}
    for r in table.filter(pc.fill_null(keep, False)).to_pylist():
        found.setdefault(r["shard"], []).append(
            Record(r["row"], r["key"], r["url"], "ok", label=r["label"], path=r["path"], shard=r["shard"],
                   url_hash=r["url_hash"], ts=r["ts"], ident=r["ident"]))
    return found


def recorded_prefix(path: str, recorded: set[str] | None) -> RecordedPrefix:
    """Walk a shard file's members up to the first sample the ledger does not hold (or a torn one);
    recorded None: every whole sample."""
    prefix = RecordedPrefix()
    size = os.path.getsize(path)
    media: str | None = None
    with open(path, "rb") as fh:
        try:
            with tarfile.open(fileobj=fh, mode="r:") as tar:
                while (member := tar.next()) is not None:
                    end = member.offset_data + member.size
                    if end > size:
                        break
                    if member.name.endswith(".json") and media is not None:
                        data = tar.extractfile(member)
                        assert data is not None
                        prefix.metas.append(json.loads(data.read()))
                        prefix.names.add(media)
                        prefix.end = end + (-end % tarfile.BLOCKSIZE)
                        media = None
                    elif recorded is None or member.name in recorded:
                        media = member.name
                    else:
                        break
        except (tarfile.TarError, ValueError, OSError):
            pass  # a header torn by the kill (or no whole header at all): the prefix ends before it
    return prefix


def retraction(rec: Record, reason: str) -> Record:
    """A record that takes back a row's ok (its sample is not in the output): fetched again."""
    return Record(rec.row, rec.key, rec.url, "failed", label=rec.label, reason=reason, retryable=True,
                  url_hash=rec.url_hash, ident=rec.ident)

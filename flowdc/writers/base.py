"""What the pipeline hands a writer, and what a writer promises."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from flowdc.ledger import Record


class StoreError(Exception):
    """The destination refused a write. `records` are the samples that are now not stored
    (for webdataset: the whole open shard), so the caller can fetch them again."""

    def __init__(self, cause: BaseException, records: list[Record]):
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause
        self.records = records


@dataclass(slots=True)
class StoredSample:
    record: Record  # filled in by the pipeline; the writer sets path/shard and hands it to the ledger
    body: bytes
    ext: str
    meta: dict[str, Any]
    refused: str | None = None  # set before the write when the body cannot be used (why, in one line)
    resizing: Future[Any] | None = None  # its resize, under way in the worker processes since it arrived
    checked: bool = False  # the decode check passed already (in the write process)


class SampleWriter(Protocol):
    def recover(self) -> dict[str, int]: ...

    def write(self, sample: StoredSample) -> None: ...

    def note_ended(self, record: Record) -> None:
        """A row that ended without a sample (failed, skipped); any thread. webdataset lists it in a shard."""
        ...

    def close(self) -> None:
        """Commit what is open and flush the ledger; raises StoreError for samples it could not keep."""
        ...


class SampleRefused(StoreError):
    """The sample itself is refused before any write (a body that does not decode): a final per-row
    failure with `reason`, not the destination's fault, so it is not fetched again."""

    def __init__(self, reason: str, detail: str, record: Record):
        super().__init__(ValueError(detail), [record])
        self.reason = reason

"""One file per sample under a folder per class (torchvision ImageFolder layout)."""

from __future__ import annotations

from flowdc.ledger import Ledger
from flowdc.storage import Destination
from flowdc.writers.base import StoredSample, StoreError
from flowdc.writers.naming import sample_path


class ImageFolderWriter:
    def __init__(self, dest: Destination, ledger: Ledger, *, labelled: bool):
        self.dest = dest
        self.ledger = ledger
        self.labelled = labelled

    def recover(self) -> dict[str, int]:
        # A file written before its ledger record was flushed is simply rewritten under the same
        # name on the next run, so only half-written temporaries need removing.
        return {"temporaries_removed": self.dest.remove_temporaries()}

    def write(self, sample: StoredSample) -> None:
        rec = sample.record
        rel = sample_path(rec.key, rec.label, sample.ext, labelled=self.labelled)
        try:
            self.dest.write_bytes(rel, sample.body)
        except Exception as exc:
            raise StoreError(exc, [rec]) from exc
        rec.path = rel
        self.ledger.add(rec)

    def close(self) -> None:
        self.ledger.flush()

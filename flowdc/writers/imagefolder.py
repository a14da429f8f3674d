"""One file per sample under a folder per class (torchvision ImageFolder layout)."""

from __future__ import annotations

from collections.abc import Callable

from flowdc.ledger import Ledger, Record
from flowdc.storage import Destination
from flowdc.writers.base import StoredSample, StoreError
from flowdc.writers.labelmap import load_label_folders, save_label_map
from flowdc.writers.naming import LabelFolders, sample_path


class ImageFolderWriter:
    def __init__(self, dest: Destination, ledger: Ledger, *, labelled: bool,
                 on_stored: Callable[[str, bytes], None] | None = None):
        self.dest = dest
        self.on_stored = on_stored  # told of each file once it is in place (the archive built meanwhile)
        self.ledger = ledger
        self.folders: LabelFolders | None = LabelFolders() if labelled else None

    def recover(self) -> dict[str, int]:
        # A file written before its ledger record was flushed is simply rewritten under the same
        # name on the next run, so only half-written temporaries need removing.
        removed = self.dest.remove_temporaries()
        compacted = self.ledger.compact_journals()
        if self.folders is not None:
            # Labels this output already holds keep their folders: a resumed class is never split.
            self.folders = load_label_folders(self.dest, self.ledger)
        return {"temporaries_removed": removed, "journals_compacted": compacted}

    def place(self, sample: StoredSample) -> str:
        """The sample's file, relative to the output (its label's folder is kept from now on)."""
        rec = sample.record
        folder = self.folders.folder_for(rec.label) if self.folders is not None else None
        return sample_path(rec.key, folder, sample.ext)

    def stored(self, sample: StoredSample, rel: str) -> None:
        """The sample's file is in place: its record goes to the ledger."""
        sample.record.path = rel
        self.ledger.add(sample.record)

    def write(self, sample: StoredSample) -> None:
        rel = self.place(sample)
        try:
            self.dest.write_bytes(rel, sample.body)
        except Exception as exc:
            raise StoreError(exc, [sample.record]) from exc
        if self.on_stored is not None:
            self.on_stored(rel, sample.body)
        self.stored(sample, rel)

    def note_ended(self, record: Record) -> None:
        pass  # the ledger is this layout's only per-row list

    def close(self) -> None:
        self.ledger.flush()
        if self.folders:
            save_label_map(self.dest, self.folders)

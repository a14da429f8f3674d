"""The label map of a labelled imagefolder output: `_flowdc/labels.json`, class folder -> label.

Folder names are safe and distinct, but not always the label itself (`a/b` is stored as
`a_b_<hash>`), so the map says which label each folder holds. The ledger stays the source of
truth: each stored sample's record has its original label and its path, so the map is rebuilt
from it on every resume and rewritten at the end of every run, and a run killed before writing it
loses nothing.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from flowdc.ledger import Ledger
from flowdc.storage import Destination
from flowdc.writers.naming import MISSING_LABEL_FOLDER, LabelFolders

LABELS_FILE = "_flowdc/labels.json"
MAP_VERSION = 1


def load_label_folders(dest: Destination, ledger: Ledger) -> LabelFolders:
    """The folders this output already holds (ledger first, then the last label map written)."""
    folders = LabelFolders()
    for label, folder in ledger_label_folders(ledger):
        folders.keep(label, folder)
    doc = read_label_map(dest) or {}
    named, merged = doc.get("folders"), doc.get("merged")
    # Read back from the output, so taken only in the shape written (keep() checks each folder).
    for folder, label in named.items() if isinstance(named, dict) else ():
        if label is None or isinstance(label, str):
            folders.keep(label, folder)
    for folder, labels in merged.items() if isinstance(merged, dict) else ():
        for label in labels if isinstance(labels, list) else ():
            if label is None or isinstance(label, str):
                folders.keep(label, folder)
    return folders


def ledger_label_folders(ledger: Ledger) -> list[tuple[str | None, str]]:
    """Distinct (label, class folder) pairs of every sample the ledger ever recorded as stored."""
    table = ledger.read(["label", "path"])
    if table.num_rows == 0:
        return []
    path = table["path"]
    table = table.filter(pc.and_(pc.is_valid(path), pc.match_substring(pc.fill_null(path, ""), "/")))
    if table.num_rows == 0:
        return []  # an unlabelled output: files at the root
    folder = pc.list_element(pc.split_pattern(table["path"], "/", max_splits=1), 0)
    pairs = pa.table({"label": table["label"], "folder": folder}).group_by(["label", "folder"]).aggregate([])
    return list(zip(pairs["label"].to_pylist(), pairs["folder"].to_pylist(), strict=True))


def read_label_map(dest: Destination) -> dict[str, Any] | None:
    """The label map as written, or None when there is none (or it cannot be read: it is rebuilt)."""
    try:
        doc = json.loads(dest.read_bytes(LABELS_FILE))
    except (FileNotFoundError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def save_label_map(dest: Destination, folders: LabelFolders) -> None:
    doc = {"version": MAP_VERSION, "missing_label_folder": MISSING_LABEL_FOLDER,
           "folders": folders.folders(), "merged": folders.merged()}
    dest.write_bytes(LABELS_FILE, json.dumps(doc, ensure_ascii=False, indent=1).encode())

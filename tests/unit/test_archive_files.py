"""archive.stored_files on a local disk: what an archive holds, found as os.walk would find it."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from flowdc.archive import SKIP_TOP, stored_files
from flowdc.localfiles import TMP_MARK
from flowdc.storage import Destination


def _by_walk(root: str) -> list[str]:
    """The reference: os.walk, _flowdc/ skipped at the top only, temporaries left out."""
    found = []
    for folder, dirs, files in os.walk(root):
        rel = os.path.relpath(folder, root)
        if rel == ".":
            dirs[:] = [d for d in dirs if d not in SKIP_TOP]
            rel = ""
        found += [posixpath.join(rel, f) for f in files if TMP_MARK not in f]
    return sorted(found)


def test_the_files_an_archive_holds_are_the_ones_a_walk_finds(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for rel in ["a.jpg", "cat/1.jpg", "cat/kitten/2.png", "dog/3.webp", "overview.json", "_flowdc/ledger/p.parquet",
                "cat/_flowdc/kept.txt", f"cat/.4.jpg{TMP_MARK}9-1", "empty/.keep", "z/y/x/w.gif"]:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(b"x")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "not_ours.jpg").write_bytes(b"y")
    (out / "linked_folder").symlink_to(tmp_path / "elsewhere")  # listed by neither: not entered
    (out / "dog" / "linked.jpg").symlink_to(out / "a.jpg")
    (out / "dog" / "dangling.jpg").symlink_to(out / "gone.jpg")
    found = stored_files(Destination(str(out)))
    assert found == _by_walk(str(out))
    assert "cat/_flowdc/kept.txt" in found and "dog/dangling.jpg" in found and "overview.json" in found
    assert not any(rel.startswith(("_flowdc/", "linked_folder")) or TMP_MARK in rel for rel in found)

"""A local whole-body write (imagefolder's per-file path): whole or absent, never a temporary left."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowdc.storage import Destination


def test_a_local_write_is_whole_or_absent_and_leaves_no_temporary(tmp_path: Path) -> None:
    dest = Destination(str(tmp_path / "out"))
    dest.write_bytes("new/folder/a.jpg", b"first")  # the folder is made on the way
    dest.write_bytes("new/folder/a.jpg", b"second")  # a rewrite replaces it
    assert (tmp_path / "out/new/folder/a.jpg").read_bytes() == b"second"
    (tmp_path / "out/new/folder/taken").mkdir()  # the final name is a folder: the rename fails
    with pytest.raises(OSError):
        dest.write_bytes("new/folder/taken", b"lost")
    assert sorted(p.name for p in (tmp_path / "out/new/folder").iterdir()) == ["a.jpg", "taken"]
    assert not any((tmp_path / "out/new/folder/taken").iterdir())

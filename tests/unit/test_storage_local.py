"""A local whole-body write (imagefolder's per-file path): whole or absent, never a temporary left."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flowdc.storage import TMP_MARK, Destination, temporary_name


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


def test_a_forked_child_names_its_temporary_files_by_its_own_pid() -> None:
    """The pid in a temporary name is cached (a system call per file otherwise); a fork must not
    inherit the parent's, or two processes could pick the same name."""
    assert f"{TMP_MARK}{os.getpid()}-" in temporary_name("a.jpg")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its name and leave at once, whatever happens
        try:
            os.write(write_end, temporary_name("a.jpg").encode())
        finally:
            os._exit(0)
    os.close(write_end)
    child_name = os.read(read_end, 4096).decode()
    os.close(read_end)
    os.waitpid(pid, 0)
    assert f"{TMP_MARK}{pid}-" in child_name

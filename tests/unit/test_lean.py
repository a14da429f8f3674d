"""Start-up trims of a command's process (flowdc.lean): the collector paused while it imports."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

import pytest

from flowdc.lean import collections_paused


def count_collections(make_objects: int) -> int:
    runs: list[int] = []

    def on_collection(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            runs.append(info["generation"])

    gc.callbacks.append(on_collection)
    try:
        kept = [[] for _ in range(make_objects)]  # lists are tracked: each counts toward a collection
        del kept
    finally:
        gc.callbacks.remove(on_collection)
    return len(runs)


def test_no_collection_runs_while_paused_and_the_collector_comes_back() -> None:
    assert gc.isenabled()
    assert count_collections(20_000) > 0  # the control: this many new objects start collections
    with collections_paused():
        assert not gc.isenabled()
        assert count_collections(20_000) == 0
    assert gc.isenabled()


def test_the_collector_comes_back_after_an_error_and_stays_off_if_it_was_off() -> None:
    with pytest.raises(ImportError), collections_paused():
        raise ImportError("no such module")
    assert gc.isenabled()
    gc.disable()
    try:
        with collections_paused():
            pass
        assert not gc.isenabled()  # a caller that turned it off keeps it off
    finally:
        gc.enable()


def test_the_download_command_imports_its_modules_with_the_collector_paused(tmp_path: Path) -> None:
    """In a fresh process, so that flowdc.download is imported by the command itself. The input is
    missing, so the command stops with its one-line error right after the imports."""
    probe = (
        "import gc, sys\n"
        "class Watch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'flowdc.download':\n"
        "            print('collector on while importing the download:', gc.isenabled())\n"
        "sys.meta_path.insert(0, Watch())\n"
        "from flowdc.cli import main\n"
        f"code = main(['download', '--input', {str(tmp_path / 'missing.csv')!r}, '--output', "
        f"{str(tmp_path / 'out')!r}, '--quiet'])\n"
        "print('exit', code, 'collector on after:', gc.isenabled())\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert "collector on while importing the download: False" in proc.stdout, proc.stdout + proc.stderr
    assert "exit 2 collector on after: True" in proc.stdout, proc.stdout + proc.stderr
    assert "input file not found" in proc.stderr

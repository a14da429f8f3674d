"""child_process.worth_starting_early: the CLI's guess, from options and the manifest's size, that a
download will want a write process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flowdc import child_process
from flowdc.config import DownloadConfig


@pytest.fixture
def big_manifest(tmp_path: Path) -> Path:
    path = tmp_path / "m.csv"
    path.write_text("url\n" + "http://127.0.0.2/x.jpg\n" * 4000)
    assert path.stat().st_size >= child_process.EARLY_START_MIN_INPUT_BYTES
    return path


def _cfg(manifest: Path, **options: object) -> DownloadConfig:
    return DownloadConfig(input=str(manifest), output=str(manifest.parent / "out"), **options)


def test_a_local_output_from_a_big_manifest_is_worth_it(big_manifest: Path) -> None:
    assert child_process.worth_starting_early(_cfg(big_manifest))
    assert child_process.worth_starting_early(_cfg(big_manifest, output_format="webdataset"))
    assert child_process.worth_starting_early(_cfg(big_manifest, create_tar=False, archive_format="tar.gz"))


@pytest.mark.parametrize("options", [
    {"verify": "full"},
    {"resize_mode": "keep_ratio"},
    {"encode_format": "webp"},
    {"create_tar": True, "archive_format": "tar.gz"},
    {"cloud_tool": "rclone", "cloud_destination": "remote:x"},
])
def test_options_that_keep_the_writes_off_a_write_process_are_not(big_manifest: Path, options: dict) -> None:
    assert not child_process.worth_starting_early(_cfg(big_manifest, **options))


def test_a_remote_output_a_small_manifest_or_none_is_not(big_manifest: Path, tmp_path: Path) -> None:
    assert not child_process.worth_starting_early(
        DownloadConfig(input=str(big_manifest), output="s3://bucket/out"))
    small = tmp_path / "small.csv"
    small.write_text("url\nhttp://127.0.0.2/x.jpg\n")
    assert not child_process.worth_starting_early(_cfg(small))
    assert not child_process.worth_starting_early(_cfg(tmp_path / "missing.csv"))


@pytest.mark.skipif(not child_process.available(), reason="no write process here (memfd, two cores)")
def test_the_write_process_gives_way_to_the_event_loop() -> None:
    from flowdc.write_child import NICENESS

    child = child_process.link(1 << 16, ("imagefolder", None, "header"))
    try:
        assert child.wait_ready(10.0)
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, child.pid) == min(19, ours + NICENESS)
    finally:
        child.shutdown()
    assert not child.running()

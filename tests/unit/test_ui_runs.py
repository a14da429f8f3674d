"""The files a page's runs get in its workdir: one set per run, the task config gone when the run
ends, and only the latest runs' telemetry kept."""

from __future__ import annotations

import os
import time
from pathlib import Path

from flowdc.config import DownloadConfig
from flowdc.ui.live import LiveState
from flowdc.ui.runs import KEEP_TELEMETRY, keep_latest, start_run


def test_two_runs_in_one_workdir_get_files_of_their_own_and_their_task_is_removed(tmp_path: Path) -> None:
    """Two pages on one workdir wrote the same download-task.json; a run's task config (which may
    hold storage secrets) stayed behind it."""
    workdir = tmp_path / "ui"
    cfg = DownloadConfig(input=str(tmp_path / "missing.parquet"), output=str(tmp_path / "out"))
    runs = [start_run("download", cfg, LiveState(), workdir) for _ in range(2)]
    tasks = [Path(run.proc.args[-1]) for run in runs]
    assert tasks[0] != tasks[1] and tasks[0].parent == tasks[1].parent == workdir
    for run in runs:
        assert run.wait(60).state == "failed"  # the manifest is missing: the child's own one-line error
    assert not any(task.exists() for task in tasks)
    assert not list(workdir.glob("*task*.json"))


def test_only_the_latest_runs_telemetry_is_kept(tmp_path: Path) -> None:
    for i in range(KEEP_TELEMETRY + 5):
        path = tmp_path / f"telemetry-{i:03d}.jsonl"
        path.write_text("{}\n")
        os.utime(path, (time.time() - 1000 + i, time.time() - 1000 + i))
    (tmp_path / "other.jsonl").write_text("{}\n")
    keep_latest(tmp_path, "telemetry-*.jsonl", KEEP_TELEMETRY - 1)
    kept = sorted(p.name for p in tmp_path.glob("telemetry-*.jsonl"))
    assert kept == [f"telemetry-{i:03d}.jsonl" for i in range(6, KEEP_TELEMETRY + 5)]
    assert (tmp_path / "other.jsonl").exists()

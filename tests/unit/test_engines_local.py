"""The local engine's outcomes, the distributor's retry rules, and the task wrapper's guards
(partition lock, worker ancestry), with real processes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flowdc.config import DistributeConfig, build_config
from flowdc.distribute import run_distribute
from flowdc.engines.base import TaskSpec
from flowdc.engines.local import LocalEngine
from flowdc.engines.task import partition_lock, worker_ancestor
from flowdc.testing.fakehosts import write_manifest


def outcomes(engine: LocalEngine, n: int, timeout_s: float = 30.0) -> dict[str, object]:
    got = {}
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        out = engine.wait(0.5)
        if out is not None:
            got[out.name] = out
    assert len(got) == n, got
    return got


def test_exit_codes_and_signals_come_back_as_outcomes(tmp_path: Path) -> None:
    engine = LocalEngine(workers=2, staging=str(tmp_path))
    engine.start()
    try:
        py = sys.executable
        engine.submit(TaskSpec("ok", [py, "-c", "print(open('in.txt').read())"],
                               inputs={"in.txt": str(_file(tmp_path / "src.txt", "hello"))}))
        engine.submit(TaskSpec("three", [py, "-c", "import sys; print('boom'); sys.exit(3)"]))
        engine.submit(TaskSpec("killed", [py, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]))
        got = outcomes(engine, 3)
    finally:
        engine.close()
    ok, three, killed = got["ok"], got["three"], got["killed"]
    assert (ok.ran, ok.exit_code) == (True, 0) and "hello" in ok.output  # the input was in its sandbox
    assert (three.ran, three.exit_code) == (True, 3) and "boom" in three.output
    assert not killed.ran and "SIGKILL" in killed.detail
    assert os.listdir(tmp_path) == ["src.txt"]  # sandboxes are gone


def _file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def one_partition(tmp_path: Path) -> Path:
    write_manifest(tmp_path / "parts" / "part-00000.parquet", ["http://127.0.0.2:9/a.png"])
    return tmp_path / "parts"


def stand_in_python(tmp_path: Path, code: int) -> str:
    """A stand-in for the workers' Python that only exits with `code`: the distributor's rules
    see the same exit codes a real task gives, without a download."""
    path = tmp_path / f"python-exit-{code}"
    path.write_text(f"#!/bin/sh\necho 'stand-in task exits {code}' >&2\nexit {code}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.mark.parametrize("code, runs", [(1, 3), (2, 1), (75, 3), (0, 1)])
def test_failed_tasks_are_retried_but_config_errors_are_not(tmp_path: Path, one_partition: Path, code: int,
                                                            runs: int) -> None:
    cfg = build_config(DistributeConfig, None, {
        "input": str(one_partition), "output": str(tmp_path / "out"), "task_retries": 2, "quiet": True,
        "worker_python": stand_in_python(tmp_path, code)})
    summary = run_distribute(cfg)
    (part,) = summary["partitions"]
    assert [r["exit_code"] for r in part["runs"]] == [code] * runs
    assert part["state"] == ("done" if code == 0 else "failed")
    # A failed run's detail is the message its task printed; a run that succeeded has none.
    expected = f"stand-in task exits {code}" if code else ""
    assert [r["detail"] for r in part["runs"]] == [expected] * runs
    assert (tmp_path / "out" / "_flowdc" / "distribute.json").is_file()


def test_a_partition_lock_waits_for_its_holder(tmp_path: Path) -> None:
    lock = str(tmp_path / "locks" / "part-00000.lock")
    with partition_lock(lock) as held:
        assert held
        t0 = time.monotonic()
        with partition_lock(lock, wait_s=0.5) as second:
            assert not second and time.monotonic() - t0 >= 0.5
    with partition_lock(lock, wait_s=0.5) as again:
        assert again
    with partition_lock(None) as unlocked:
        assert unlocked


def test_the_task_finds_the_worker_it_runs_under(tmp_path: Path) -> None:
    # The kernel names a process after the file it runs: a link called vine_worker to sh plays one.
    fake_worker = tmp_path / "vine_worker"
    fake_worker.symlink_to("/bin/sh")
    probe = f"{sys.executable} -c 'from flowdc.engines.task import worker_ancestor; print(worker_ancestor())'"
    proc = subprocess.Popen([str(fake_worker), "-c", f"{probe}; true"], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    out, _ = proc.communicate(timeout=30)
    assert out.strip() == str(proc.pid)
    assert worker_ancestor() is None  # pytest does not run under a worker


@pytest.mark.parametrize("option, value", [("telemetry", "t.jsonl"), ("telemetry_push", "http://127.0.0.1:9"),
                                           ("partition_id", "part-00007")])
def test_distribute_refuses_download_options_it_sets_per_task(tmp_path: Path, one_partition: Path, option: str,
                                                              value: str) -> None:
    """Each task's telemetry goes to the manager and its partition_id is its partition: given to
    distribute, these would be ignored, so they are refused (one line, exit 2) before anything runs."""
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "flowdc", "distribute", "--input", str(one_partition), "--output",
                           str(out), "--quiet", f"--{option}", value], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert option in line and "distribute" in line
    assert not out.exists()


def test_distribute_run_id_names_the_run_and_every_task(tmp_path: Path, one_partition: Path) -> None:
    seen = tmp_path / "seen.json"
    python = tmp_path / "python-records-its-task"
    python.write_text(f"#!/bin/sh\ncp task.json '{seen}'\n")  # a stand-in task: keeps its config, exits 0
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    cfg = build_config(DistributeConfig, None, {
        "input": str(one_partition), "output": str(tmp_path / "out"), "quiet": True, "run_id": "weekly-42",
        "worker_python": str(python)})
    summary = run_distribute(cfg)
    assert summary["run_id"] == "weekly-42"
    task = json.loads(seen.read_text())
    assert (task["run_id"], task["partition_id"]) == ("weekly-42", "part-00000")

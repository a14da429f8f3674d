"""The deployments end to end, as a user runs them: a real Prefect server on loopback
(`prefect server start`, SQLite in a temporary PREFECT_HOME), `python deployments/serve.py`, then
`prefect deployment run 'collect-dataset/demo'` through the CLI. The run completes, its outputs
exist, the weekly cron schedule is registered (read back through the API), and every process the
test started is stopped, on failure too."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pyarrow.parquet as pq
import pytest

from flowdc.consolidate import INDEX_FILE
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def api(base: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"},
                                 method="GET" if body is None else "POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"null")


class Processes:
    """Processes started in sessions of their own; stop() ends each with its whole tree."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []
        self.seen: set[psutil.Process] = set()

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115  (closed with the process)
        proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def note_trees(self) -> None:
        """Remember every descendant now, so that stop() can check each one is gone."""
        for proc in self.procs:
            try:
                root = psutil.Process(proc.pid)
                self.seen.update([root, *root.children(recursive=True)])
            except psutil.NoSuchProcess:
                continue

    def stop(self) -> list[str]:
        self.note_trees()
        for proc in reversed(self.procs):  # the server last: serve.py reports to it on the way out
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
            for p in list(self.seen):
                try:  # anything of its session still alive
                    if os.getpgid(p.pid) == proc.pid and p.is_running():
                        p.kill()
                except (ProcessLookupError, psutil.NoSuchProcess):
                    pass
        _gone, alive = psutil.wait_procs(list(self.seen), timeout=10)
        return [f"{p.pid} {p.name()}" for p in alive]


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        left = procs.stop()
        assert not left, f"processes left running: {left}"


def test_serve_and_run_the_demo_deployment(tmp_path: Path, processes: Processes) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": base,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "PREFECT_RUNNER_POLL_FREQUENCY": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    server = processes.start("server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                                        "--port", str(port)], env)
    wait_for("the Prefect server", lambda: api(base, "/health"), 120, alive=[server], tolerate=(OSError,), every_s=0.5)
    serve = processes.start("serve", [sys.executable, "deployments/serve.py", "--sample_rows", "150",
                                      "--output", str(tmp_path / "default")], env)

    def deployments() -> dict[str, Any]:
        found = {d["name"]: d for d in api(base, "/deployments/filter", {})}
        return found if {"demo", "weekly-refresh"} <= set(found) else {}

    found = wait_for("both deployments", deployments, 90, alive=[server, serve], tolerate=(OSError,), every_s=0.5)
    weekly = found["weekly-refresh"]
    assert [s["schedule"]["cron"] for s in weekly["schedules"]] == ["0 3 * * 1"]
    assert all(s["active"] for s in weekly["schedules"]) and not weekly["paused"]
    assert found["demo"]["schedules"] == []
    assert weekly["parameters"]["output"] == found["demo"]["parameters"]["output"] == str(tmp_path / "default")

    out = tmp_path / "dataset"
    processes.note_trees()
    run = subprocess.run([str(BIN / "prefect"), "deployment", "run", "collect-dataset/demo", "--param",
                          f"output={out}", "--watch", "--watch-timeout", "240"], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    processes.note_trees()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Completed" in run.stdout

    runs = api(base, "/flow_runs/filter", {"deployments": {"id": {"any_": [found["demo"]["id"]]}}})
    assert [r["state_type"] for r in runs] == ["COMPLETED"]
    index = pq.read_table(out / INDEX_FILE)
    assert index.num_rows == 150
    assert index.column("status").to_pylist().count("ok") >= 140  # the flaky sample host may fail a few for good
    images = [p for p in out.glob("run-*/part-*/*/*") if not p.parent.name.startswith("_")]
    assert len(images) >= 140 and (out / "dataset.json").is_file()
    artifacts = api(base, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [runs[0]["id"]]}}})
    assert {"dataset-summary", "dataset-partitions", "dataset-index"} <= {a["key"] for a in artifacts}

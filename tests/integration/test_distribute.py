"""`flowdc distribute` end to end, on real engines: local processes, real Work Queue workers, and
TaskVine workers where ndcctools.taskvine imports.

Each test downloads a partitioned manifest from fake hosts on loopback, SIGKILLs a worker (or, for
the local engine, a task process) while it runs a partition, lets another worker join, and checks
that every partition completes with every row stored exactly once: no row lost, none duplicated
(in the ledgers and in the files), and no row the ledger held as stored fetched again.
Every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pyarrow.parquet as pq
import pytest

from flowdc.config import PartitionConfig
from flowdc.consolidate import INDEX_FILE, consolidate
from flowdc.ledger import Ledger
from flowdc.partition import run_partition
from flowdc.storage import TMP_MARK, Destination
from flowdc.testing.fakehosts import FakeHostFarm, HostSpec
from flowdc.ui.live import LiveState
from tests.integration.conftest import expected_png, requested_urls, sha256, subprocess_env, write_manifest
from tests.waiting import wait_for

ROWS = 360
GROUPS = 4
RUN_TIMEOUT_S = 150.0
# Slow enough hosts (80 ms, 3 in flight per task) that a partition takes a few seconds: a kill lands mid-run.
TASK_OPTIONS = ["--disable_paarc", "--C_init", "3", "--concurrent_downloads", "3", "--timeout", "5",
                "--retry_backoff_sec", "0.05", "--quiet", "--task_memory_mb", "300", "--task_disk_mb", "50"]
TASK_MARK = "flowdc.engines.task"


@pytest.fixture
def farm(farm_factory: Callable[[list[HostSpec]], FakeHostFarm]) -> FakeHostFarm:
    return farm_factory([HostSpec(f"127.0.0.{i}", latency_s=0.08) for i in (2, 3, 4)])


@pytest.fixture
def parts(tmp_path: Path, farm: FakeHostFarm) -> Path:
    """A host-partitioned manifest: 3 hosts over 4 partitions, so some hosts are split."""
    urls = [farm.url(i % 3, f"/img/{i:05d}.png") for i in range(ROWS)]
    manifest = write_manifest(tmp_path / "manifest.parquet", urls, labels=[f"class{i % 4}" for i in range(ROWS)])
    run_partition(PartitionConfig(input=str(manifest), output_folder=str(tmp_path / "parts"), groups=GROUPS,
                                  quiet=True), progress=False)
    return tmp_path / "parts"


class Manager:
    """`flowdc distribute` as a subprocess, its stdout and stderr each read on a thread of its own
    (not by communicate(), which would close the stderr the line reader still iterates)."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "flowdc", "distribute", *args], env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        self.stdout: list[str] = []
        self.readers = [threading.Thread(target=self._read, daemon=True),
                        threading.Thread(target=self._read_stdout, daemon=True)]
        for reader in self.readers:
            reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            self.lines.put(line)

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        self.stdout.extend(self.proc.stdout)

    def port(self, timeout_s: float = 30.0) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                assert self.proc.poll() is None, "".join(self.stderr)
                continue
            m = re.search(r"listening on port (\d+)", line)
            if m:
                return int(m.group(1))
        raise AssertionError("the manager never printed its port:\n" + "".join(self.stderr))

    def finish(self, timeout_s: float = RUN_TIMEOUT_S) -> str:
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError("distribute did not finish in time:\n" + "".join(self.stderr[-40:])) from None
        for reader in self.readers:
            reader.join(10)  # the pipes close with the process: both readers end
        out = "".join(self.stdout)
        assert self.proc.returncode == 0, out + "".join(self.stderr[-40:])
        return out


@contextlib.contextmanager
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts (workers); all are killed at the end, whatever happened."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            kill_worker(proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)


def kill_worker(pid: int) -> None:
    """SIGKILL a worker as a dying machine would: with its helper processes. TaskVine's worker forks a
    transfer server that holds the manager's connection open; left alive, the manager would only
    notice the loss at its keepalive timeout. The worker's task is left running, as an orphan."""
    try:
        root = psutil.Process(pid)
        victims = [root, *(c for c in root.children() if c.name() == root.name())]
    except psutil.NoSuchProcess:
        return
    for proc in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)


def task_processes(root: psutil.Process) -> list[psutil.Process]:
    """The download tasks running below `root` (a worker, or the local manager)."""
    found = []
    with contextlib.suppress(psutil.NoSuchProcess):
        for child in root.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if any(TASK_MARK in part for part in child.cmdline()):
                    found.append(child)
    return found


def stored_rows(out: Path) -> set[int]:
    """Rows every partition's ledger holds as ok right now."""
    rows: set[int] = set()
    for part in sorted(out.glob("part-*")):
        if part.is_dir():
            table = Ledger(Destination(str(part))).latest(["row", "status"]).to_pylist()
            rows |= {r["row"] for r in table if r["status"] == "ok"}
    return rows


def check_dataset(out: Path, farm: FakeHostFarm, stored_at_kill: set[int], fmt: str) -> dict[str, Any]:
    """Every partition done, every row stored exactly once, files match the ledger, no refetch of a stored row."""
    summary = json.loads((out / "_flowdc" / "distribute.json").read_text())
    assert [p["state"] for p in summary["partitions"]] == ["done"] * GROUPS, summary["partitions"]
    records = []
    for part in sorted(out.glob("part-*")):
        records += Ledger(Destination(str(part))).latest().to_pylist()
    rows = [r["row"] for r in records]
    assert sorted(rows) == list(range(ROWS)), "a row is missing or in two partitions"
    assert {r["status"] for r in records} == {"ok"}
    by_key = {r["key"]: r for r in records}
    if fmt == "webdataset":
        assert_unique_data_names(out)
        shards = sorted(out.glob("part-*/*.tar"))
        seen: dict[str, bytes] = {}
        for shard in shards:
            with tarfile.open(shard) as tar:
                for member in tar.getmembers():
                    if member.name.endswith(".png"):
                        key = member.name.split(".")[0]
                        assert key not in seen, f"{key} stored twice"
                        fh = tar.extractfile(member)
                        assert fh is not None
                        seen[key] = fh.read()
    else:
        files = [p for p in out.glob("part-*/class*/*.png")]
        seen = {p.stem: p.read_bytes() for p in files}
        assert len(files) == len(seen), "a key stored twice"
    assert set(seen) == set(by_key)
    for key, body in seen.items():
        rec = by_key[key]
        assert body == expected_png("/img/" + rec["url"].rsplit("/img/", 1)[1]) and sha256(body) == rec["sha256"]
    assert not [p for p in out.rglob("*") if TMP_MARK in p.name]
    # The ledger is the truth: a row it held as stored when the worker died is never fetched again.
    counts = requested_urls(farm)
    urls = {r["row"]: r["url"] for r in records}
    refetched = [row for row in stored_at_kill if counts[urls[row]] != 1]
    assert not refetched, f"rows stored before the kill were fetched again: {sorted(refetched)[:10]}"
    assert stored_at_kill, "nothing was stored before the kill: it did not land mid-run"
    return summary


def assert_unique_data_names(out: Path) -> list[Path]:
    """The dataset's data files (every file of a partition's top but its overview) have names unique
    across the whole DEST: shards can be gathered into one folder."""
    files = [p for p in out.glob("part-*/*") if p.is_file() and p.name != "overview.json"]
    names = [p.name for p in files]
    assert files and len(names) == len(set(names)), sorted(names)
    assert all(p.name.startswith(p.parent.name + "-") for p in files), names
    return files


def no_orphans(worker_dirs: list[Path]) -> None:
    """No download task is left running from a killed worker's sandbox."""
    def orphans() -> list[psutil.Process]:
        left = []
        for proc in psutil.process_iter(["cmdline", "cwd"]):
            with contextlib.suppress(psutil.Error):
                cwd = proc.info["cwd"] or ""
                if any(TASK_MARK in c for c in proc.info["cmdline"] or []) and any(
                        cwd.startswith(str(d)) for d in worker_dirs):
                    left.append(proc)
        return left

    wait_for("orphaned tasks to stop", lambda: not orphans(), timeout_s=30.0)


def run_cctools_scenario(tmp_path: Path, farm: FakeHostFarm, parts: Path, engine: str, worker_bin: str,
                         fmt: str, env: dict[str, str]) -> None:
    out = tmp_path / "out"
    dirs = [tmp_path / f"w{i}" for i in range(3)]
    for d in dirs:
        d.mkdir()
    manager = Manager(["--engine", engine, "--port_number", "0", "--input", str(parts), "--output", str(out),
                       "--label_col", "label", "--output_format", fmt, "--samples_per_shard", "15", *TASK_OPTIONS],
                      env)
    try:
        port = manager.port()
        with processes() as workers:
            for d in dirs[:2]:
                workers.append(subprocess.Popen([worker_bin, "--cores", "1", "--timeout", "30", "-s", str(d),
                                                 "127.0.0.1", str(port)], env=env, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL))

            def busy_worker() -> subprocess.Popen[bytes] | None:
                if len(stored_rows(out)) < 15:
                    return None
                return next((w for w in workers if task_processes(psutil.Process(w.pid))), None)

            def state() -> str:
                trees = [[c.cmdline() for c in psutil.Process(w.pid).children(recursive=True)] for w in workers]
                return f"stored={len(stored_rows(out))} trees={trees} manager={''.join(manager.stderr)[-2000:]}"

            victim = wait_for("a worker running a task after rows were stored", busy_worker, state=state)
            kill_worker(victim.pid)
            victim.wait(10)
            stored_at_kill = stored_rows(out)
            workers.append(subprocess.Popen([worker_bin, "--cores", "1", "--timeout", "30", "-s", str(dirs[2]),
                                             "127.0.0.1", str(port)], env=env, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL))
            manager.finish()
            no_orphans(dirs)
    finally:
        if manager.proc.poll() is None:
            manager.proc.kill()
    summary = check_dataset(out, farm, stored_at_kill, fmt)
    runs = {p["name"]: [(r["detail"] or r["exit_code"]) for r in p["runs"]] for p in summary["partitions"]}
    print(f"{engine}: runs per partition (exit code, or why a run was lost): {runs}")
    assert sum(p["lost"] for p in summary["partitions"]) >= 1, runs  # the killed worker's run is counted
    # Run again with no worker at all: every partition finished, so nothing waits for one.
    before = requested_urls(farm)
    again = Manager(["--engine", engine, "--port_number", "0", "--input", str(parts), "--output", str(out),
                     "--label_col", "label", "--output_format", fmt, "--samples_per_shard", "15", *TASK_OPTIONS], env)
    again.finish(timeout_s=60)
    assert "finished in an earlier run: not run again" in "".join(again.stderr), again.stderr
    assert requested_urls(farm) == before


def worker_for(module: Any, name: str) -> str:
    """The worker binary of the same cctools installation as the Python module (worker and manager
    must speak the same protocol: Debian's 9.9 and a 7.x build do not), else the one on PATH."""
    for parent in Path(module.__file__).resolve().parents:
        candidate = parent / "bin" / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} not found next to {module.__name__} or on PATH")
    return found


def test_workqueue_survives_a_killed_worker(tmp_path: Path, farm: FakeHostFarm, parts: Path) -> None:
    wq = pytest.importorskip("work_queue", reason="Work Queue bindings missing (scripts/bootstrap.sh links them)")
    worker = worker_for(wq, "work_queue_worker")
    run_cctools_scenario(tmp_path, farm, parts, "workqueue", worker, "webdataset", subprocess_env())


def test_taskvine_survives_a_killed_worker(tmp_path: Path, farm: FakeHostFarm, parts: Path) -> None:
    vine = pytest.importorskip("ndcctools.taskvine", reason="TaskVine (ndcctools) is not installed here")
    worker = worker_for(vine, "vine_worker")
    run_cctools_scenario(tmp_path, farm, parts, "taskvine", worker, "webdataset", subprocess_env())


@pytest.mark.parametrize("force", [False, True], ids=["resume", "force"])
def test_local_engine_survives_a_killed_task_process(tmp_path: Path, farm: FakeHostFarm, parts: Path,
                                                     force: bool) -> None:
    out = tmp_path / "out"
    # --force clears DEST once, at the start: the killed partition's rerun still resumes. The
    # manager draws its live line (tasks are quiet whatever it is given).
    options = [o for o in TASK_OPTIONS if o != "--quiet"]
    manager = Manager(["--engine", "local", "--workers", "2", "--input", str(parts), "--output", str(out),
                       "--label_col", "label", *options, *(["--force"] if force else [])], subprocess_env())
    try:
        root = psutil.Process(manager.proc.pid)
        victim = wait_for("a task with stored rows",
                          lambda: len(stored_rows(out)) >= 15 and next(iter(task_processes(root)), None))
        victim.send_signal(signal.SIGKILL)
        stored_at_kill = stored_rows(out)
        manager.finish()
    finally:
        if manager.proc.poll() is None:
            manager.proc.kill()
    summary = check_dataset(out, farm, stored_at_kill, "imagefolder")
    assert sum(p["lost"] for p in summary["partitions"]) == 1, "the killed run was not reported as lost"
    # The live line ends where the summary does: the lost run's stored rows still count.
    bar = re.findall(r"done=(\d+) .*? ok=(\d+) ", "".join(manager.stderr))
    assert bar and bar[-1] == (str(GROUPS), str(summary["totals"]["ok"])), bar[-3:]


def one_slow_partition(tmp_path: Path, farm_factory: Callable[[list[HostSpec]], FakeHostFarm], latency_s: float,
                       rows: int) -> tuple[FakeHostFarm, Path]:
    """tmp_path/parts/part-00000.parquet: `rows` URLs on one host that answers after `latency_s`;
    returns the host and the output folder to distribute into."""
    slow = farm_factory([HostSpec("127.0.0.5", latency_s=latency_s)])
    write_manifest(tmp_path / "parts" / "part-00000.parquet", [slow.url(0, f"/img/{i:05d}.png") for i in range(rows)])
    return slow, tmp_path / "out"


def test_a_killed_local_manager_leaves_no_task_running_and_its_rerun_resumes(
        tmp_path: Path, farm_factory: Callable[[list[HostSpec]], FakeHostFarm]) -> None:
    rows = 100
    slow, out = one_slow_partition(tmp_path, farm_factory, 0.2, rows)
    args = ["--input", str(tmp_path / "parts"), "--output", str(out), "--workers", "1", "--disable_paarc",
            "--quiet", "--task_retries", "0"]
    # 2 in flight at 0.2 s: 10 s of fetching, and the kill lands about a second in.
    manager = Manager([*args, "--C_init", "2", "--concurrent_downloads", "2"], subprocess_env())
    task: psutil.Process | None = None
    try:
        root = psutil.Process(manager.proc.pid)
        task = wait_for("a task with stored rows", lambda: len(stored_rows(out)) >= 4 and next(
            iter(task_processes(root)), None))
        staging = Path(task.cwd()).parents[1]
        manager.proc.kill()
        manager.proc.wait(10)
        # The task sees its manager gone, stops the clean way and keeps what it stored.
        wait_for("the orphaned task to stop", lambda: not task.is_running() or task.status() == psutil.STATUS_ZOMBIE,
                 timeout_s=5.0, state=lambda: f"stored={len(stored_rows(out))}")
    finally:
        if manager.proc.poll() is None:
            manager.proc.kill()
        if task is not None:
            with contextlib.suppress(psutil.Error):
                task.kill()
    stored_at_kill = stored_rows(out)
    assert 4 <= len(stored_at_kill) < rows
    # The rerun finds the partition unlocked at once and resumes; the dead manager's staging is removed.
    Manager([*args, "--C_init", "10", "--concurrent_downloads", "10"], subprocess_env()).finish(timeout_s=60)
    records = Ledger(Destination(str(out / "part-00000"))).latest().to_pylist()
    assert sorted(r["row"] for r in records) == list(range(rows)) and {r["status"] for r in records} == {"ok"}
    counts = requested_urls(slow)
    urls = {r["row"]: r["url"] for r in records}
    assert all(counts[urls[row]] == 1 for row in stored_at_kill)
    assert staging.name.startswith("flowdc-distribute-") and not staging.exists()


def test_a_task_over_its_wall_time_stops_cleanly_and_its_rerun_resumes(
        tmp_path: Path, farm_factory: Callable[[list[HostSpec]], FakeHostFarm]) -> None:
    rows = 60
    slow, out = one_slow_partition(tmp_path, farm_factory, 0.3, rows)
    # 2 in flight at 0.3 s: 9 s of fetching against a 6 s limit per run.
    manager = Manager(["--input", str(tmp_path / "parts"), "--output", str(out), "--workers", "1",
                       "--timeout_minutes", "0.1", "--task_retries", "10", "--disable_paarc", "--C_init", "2",
                       "--concurrent_downloads", "2", "--quiet"], subprocess_env())
    manager.finish()
    (part,) = json.loads((out / "_flowdc" / "distribute.json").read_text())["partitions"]
    codes = [r["exit_code"] for r in part["runs"]]
    assert part["state"] == "done" and codes[-1] == 0 and set(codes[:-1]) == {124} and len(codes) >= 2
    assert {r["detail"] for r in part["runs"][:-1]} == {"stopped at its wall-time limit (timeout_minutes=0.1)"}
    assert "exited 124: stopped at its wall-time limit (timeout_minutes=0.1); resubmitting" in "".join(manager.stderr)
    records = Ledger(Destination(str(out / "part-00000"))).latest().to_pylist()
    assert sorted(r["row"] for r in records) == list(range(rows)) and {r["status"] for r in records} == {"ok"}
    # A clean stop keeps everything it stored: only requests in flight at the stop are made again.
    counts = requested_urls(slow)
    assert max(counts.values()) <= 2 and sum(counts.values()) <= rows + 2 * (len(codes) - 1)


def test_three_partitions_have_unique_shard_names_and_telemetry_per_partition(
        tmp_path: Path, farm_factory: Callable[[list[HostSpec]], FakeHostFarm]) -> None:
    farm = farm_factory([HostSpec(f"127.0.0.{i}", latency_s=0.05) for i in (2, 3)])
    rows = 90
    urls = [farm.url(i % 2, f"/img/{i:05d}.png") for i in range(rows)]
    manifest = write_manifest(tmp_path / "manifest.parquet", urls)
    run_partition(PartitionConfig(input=str(manifest), output_folder=str(tmp_path / "parts"), groups=3, quiet=True),
                  progress=False)
    out = tmp_path / "out"
    Manager(["--input", str(tmp_path / "parts"), "--output", str(out), "--workers", "2", "--output_format",
             "webdataset", "--samples_per_shard", "7", "--disable_paarc", "--C_init", "4", "--quiet"],
            subprocess_env()).finish()
    # Shard names: unique across DEST, and every path the dataset index gives names a member of that shard.
    files = assert_unique_data_names(out)
    assert len([p for p in files if p.suffix == ".tar"]) >= 3 * 4  # 30 rows a partition, 7 a shard
    consolidate(str(out))
    index = pq.read_table(out / INDEX_FILE, columns=["path", "member", "status"]).to_pylist()
    assert len(index) == rows and {r["status"] for r in index} == {"ok"}
    members: dict[str, set[str]] = {}
    for r in index:
        if r["path"] not in members:
            with tarfile.open(out / r["path"]) as tar:
                members[r["path"]] = set(tar.getnames())
        assert r["member"] in members[r["path"]], r
    # Telemetry, as the manager's collector merged it: every line names the run and its partition,
    # and the live view keeps each partition's hosts apart and adds the partitions up.
    run_id = json.loads((out / "_flowdc" / "distribute.json").read_text())["run_id"]
    text = (out / "_flowdc" / "telemetry.jsonl").read_text()
    docs = [json.loads(line) for line in text.splitlines()]
    names = {"part-00000", "part-00001", "part-00002"}
    assert {d["run_id"] for d in docs} == {run_id} and {d["partition_id"] for d in docs} == names
    assert {d["partition_id"] for d in docs if d["kind"] == "run" and d["done"]} == names
    assert {d["partition_id"] for d in docs if d["kind"] == "host"} == names
    live = LiveState()
    live.ingest_lines(text)
    view = live.view()
    assert view.partitions == [f"{run_id}/{n}" for n in sorted(names)]
    assert view.totals.ok == rows and view.totals.finished
    per_partition = {(r["partition"], r["host"]) for r in view.rows}
    assert {p for p, _ in per_partition} == set(view.partitions) and len(per_partition) == len(view.rows)


def test_consolidate_counts_the_rows_of_partitions_that_have_no_output(
        tmp_path: Path, farm_factory: Callable[[list[HostSpec]], FakeHostFarm]) -> None:
    """A partition never started (its folder gone here) or cut short has fewer ledger rows than
    the plan gave it. consolidate counted only rows with a record: '57/59 rows stored (96.6%)'
    for a distribute killed 57 rows into 3,000. It now counts the plan's rows and names them."""
    farm = farm_factory([HostSpec("127.0.0.2", latency_s=0.01)])
    urls = [farm.url(0, f"/img/{i:05d}.png") for i in range(90)]
    run_partition(PartitionConfig(input=str(write_manifest(tmp_path / "m.parquet", urls)),
                                  output_folder=str(tmp_path / "parts"), groups=3, method="simple", quiet=True),
                  progress=False)
    out = tmp_path / "out"
    Manager(["--input", str(tmp_path / "parts"), "--output", str(out), "--workers", "2", "--quiet"],
            subprocess_env()).finish()
    whole = consolidate(str(out))
    assert (whole["totals"]["planned"], whole["totals"]["not_recorded"], whole["unfinished"]) == (90, 0, [])

    shutil.rmtree(out / "part-00001")  # never started, as far as the ledgers tell
    shutil.rmtree(out / "part-00002")  # cut short: a third of its rows recorded
    third = pq.read_table(tmp_path / "parts" / "part-00002.parquet").slice(0, 10)
    pq.write_table(third, tmp_path / "third.parquet")
    done = subprocess.run([sys.executable, "-m", "flowdc", "download", "--input", str(tmp_path / "third.parquet"),
                           "--output", str(out / "part-00002"), "--quiet"], env=subprocess_env(), timeout=60)
    assert done.returncode == 0
    proc = subprocess.run([sys.executable, "-m", "flowdc", "consolidate", str(out)], capture_output=True, text=True,
                          env=subprocess_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "flowdc: 40/90 planned rows stored (44.4%) in 2 outputs" in proc.stdout, proc.stdout
    assert "50 planned rows have no record yet (part-00001 not started; part-00002 partial)" in proc.stdout
    overview = json.loads((out / "dataset.json").read_text())
    assert overview["unfinished"] == [{"folder": "part-00001", "planned": 30, "recorded": 0},
                                      {"folder": "part-00002", "planned": 30, "recorded": 10}]

"""`flowdc distribute` with cloud_tool: each task stages its shards in its sandbox and ships each
committed shard (the real rclone, local to local; and tests/stand_ins/gocmd, a STAND-IN for
CyVerse's gocmd, which cannot be installed here). Its ledger and overview ship with the shards
(one state file) and come back to the manager as the task's output file, unpacked into
DEST/part-NNNNN/. A staged shard is also committed after shard_max_seconds; a partition where
every row fails is a completed task; a second distribute run resumes from the returned states and
fetches nothing again.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from flowdc.ledger import Ledger
from flowdc.storage import Destination
from flowdc.testing.fakehosts import FakeHostFarm, HostSpec
from tests.integration.conftest import REPO, requested_urls, subprocess_env, write_manifest
from tests.integration.test_distribute import Manager, processes, worker_for

STAND_INS = REPO / "tests" / "stand_ins"
ROWS = 24  # per good partition
PARTS = ("part-00000", "part-00001", "part-00002")


def remote_samples(folder: Path) -> Counter[tuple[str, str]]:
    """(partition, sample key) -> copies over every shipped shard (these manifests number rows per partition)."""
    counts: Counter[tuple[str, str]] = Counter()
    for shard in folder.glob("part-*/part-*-*.tar"):
        with tarfile.open(shard) as tar:
            counts.update((shard.parent.name, m.name.rsplit(".", 1)[0]) for m in tar.getmembers()
                          if not m.name.endswith(".json"))
    return counts


@pytest.mark.parametrize("tool", ["rclone", "gocmd"])
def test_staged_tasks_ship_shards_and_return_their_ledgers(
        tmp_path: Path, farm_factory: Callable[[list[HostSpec]], FakeHostFarm], tool: str) -> None:
    farm = farm_factory([HostSpec(f"127.0.0.{i}", latency_s=0.1) for i in (2, 3)])
    parts = tmp_path / "parts"
    for i in range(2):  # 24 rows, 3 in flight, 0.1 s each: about a second of fetching a partition
        write_manifest(parts / f"{PARTS[i]}.parquet", [farm.url(i, f"/img/{i}-{n:03d}.png") for n in range(ROWS)])
    write_manifest(parts / f"{PARTS[2]}.parquet", [farm.url(0, f"/gone/{n}.png?fail=404") for n in range(6)])
    out, env = tmp_path / "out", subprocess_env()
    if tool == "rclone":
        remote = destination = tmp_path / "remote side"
    else:
        zone = tmp_path / "irods"
        zone.mkdir()
        env.update(PATH=f"{STAND_INS}{os.pathsep}{env['PATH']}", GOCMD_STANDIN_ROOT=str(zone),
                   GOCMD_STANDIN_COUNTER=str(tmp_path / "gocmd-calls"))
        destination, remote = Path("/zone/home/u/ds"), zone / "zone/home/u/ds"
    args = ["--input", str(parts), "--output", str(out), "--workers", "2", "--output_format", "webdataset",
            "--samples_per_shard", "1000", "--shard_max_seconds", "0.3", "--disable_paarc", "--C_init", "3",
            "--concurrent_downloads", "3", "--max_retry_attempts", "0", "--cloud_tool", tool,
            "--cloud_destination", str(destination), "--quiet"]
    Manager(args, env).finish()

    summary = json.loads((out / "_flowdc" / "distribute.json").read_text())
    assert [(p["name"], p["state"], p["totals"].get("ok")) for p in summary["partitions"]] == [
        ("part-00000", "done", ROWS), ("part-00001", "done", ROWS), ("part-00002", "done", 0)]
    for name in PARTS:
        # Shipped: shards (named for their partition), the overview, the state with the ledger in it.
        shipped = {p.name for p in (remote / name).iterdir()}
        assert {"overview.json", "flowdc-state.tar"} <= shipped
        with tarfile.open(remote / name / "flowdc-state.tar") as state:
            assert any(n.startswith("_flowdc/ledger/") for n in state.getnames())
        # Come back: the ledger and overview at DEST, and no shard (they live at the remote).
        assert (out / name / "overview.json").is_file() and (out / "_flowdc" / "partitions" / f"{name}.tar").is_file()
        assert not list((out / name).glob("*.tar"))
        records = Ledger(Destination(str(out / name))).latest().to_pylist()
        statuses = Counter(r["status"] for r in records)
        assert statuses == (Counter(failed=6) if name == "part-00002" else Counter(ok=ROWS)), (name, statuses)
        tars = sorted(n for n in shipped if n.endswith(".tar") and n != "flowdc-state.tar")
        if name != "part-00002":
            # Committed on time (0.3 s) long before 1000 samples: a loss there is bounded in time too.
            assert len(tars) >= 2 and all(n.startswith(f"{name}-") for n in tars), tars
            assert all(n[:-4] + ".parquet" in shipped and n[:-4] + "_stats.json" in shipped for n in tars)
            assert {r["path"].split(":")[0] for r in records} <= set(tars)
    copies = remote_samples(remote)
    assert len(copies) == 2 * ROWS and set(copies.values()) == {1}
    if tool == "gocmd":
        return
    # Run again: every partition resumes from the state it returned; nothing is fetched or shipped again.
    before, shipped_before = requested_urls(farm), sorted(str(p) for p in remote.rglob("part-*-*.tar"))
    Manager(args, env).finish()
    assert requested_urls(farm) == before
    assert sorted(str(p) for p in remote.rglob("part-*-*.tar")) == shipped_before


CCTOOLS = {"workqueue": ("work_queue", "work_queue_worker", "Work Queue bindings missing (scripts/bootstrap.sh)"),
           "taskvine": ("ndcctools.taskvine", "vine_worker", "TaskVine (ndcctools) is not installed here")}


@pytest.mark.parametrize("engine", sorted(CCTOOLS))
def test_cctools_workers_bring_the_state_back(
        tmp_path: Path, farm_factory: Callable[[list[HostSpec]], FakeHostFarm], engine: str) -> None:
    """The same on a real Work Queue (or TaskVine) worker: the state file comes back as the task's output file."""
    module, worker_name, why = CCTOOLS[engine]
    binding = pytest.importorskip(module, reason=why)
    farm = farm_factory([HostSpec("127.0.0.2", latency_s=0.02)])
    parts = tmp_path / "parts"
    for i in range(2):
        write_manifest(parts / f"{PARTS[i]}.parquet", [farm.url(0, f"/img/{i}-{n:03d}.png") for n in range(10)])
    out, remote, env = tmp_path / "out", tmp_path / "remote", subprocess_env()
    manager = Manager(["--engine", engine, "--port_number", "0", "--input", str(parts), "--output", str(out),
                       "--output_format", "webdataset", "--cloud_tool", "rclone", "--cloud_destination", str(remote),
                       "--quiet"], env)
    try:
        port = manager.port()
        (tmp_path / "w").mkdir()
        with processes() as workers:
            workers.append(subprocess.Popen([worker_for(binding, worker_name), "--cores", "1", "--timeout", "30",
                                             "-s", str(tmp_path / "w"), "127.0.0.1", str(port)], env=env,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            manager.finish()
    finally:
        if manager.proc.poll() is None:
            manager.proc.kill()
    for name in PARTS[:2]:
        assert (out / "_flowdc" / "partitions" / f"{name}.tar").is_file()
        records = Ledger(Destination(str(out / name))).latest().to_pylist()
        assert Counter(r["status"] for r in records) == Counter(ok=10)
        assert (remote / name / f"{name}-000000.tar").is_file() and (remote / name / "flowdc-state.tar").is_file()

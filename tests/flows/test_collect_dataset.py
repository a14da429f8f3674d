"""The collect-dataset flow end to end on fake hosts on loopback, under one Prefect test harness."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from flowdc.consolidate import DATASET_FILE, INDEX_FILE
from flowdc.ledger import Ledger
from flowdc.storage import Destination
from flowdc.testing.fakehosts import FakeHostFarm, HostSpec
from tests.integration.conftest import write_manifest

FarmFactory = Callable[[Sequence[HostSpec]], FakeHostFarm]
FAST = {"timeout": 5.0, "retry_backoff_sec": 0.05, "max_retry_attempts": 1}


def flow_run_artifacts(flow_run_id: Any) -> dict[str, Any]:
    """key -> artifact of a flow run, read back through the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
            any_=[flow_run_id])))
    return {a.key or a.type: a for a in found}


def ledgers_of(run_dir: Path) -> list[dict[str, Any]]:
    return [Ledger(Destination(str(p))).summary() for p in sorted(run_dir.glob("part-*")) if p.is_dir()]


@pytest.mark.usefixtures("prefect_harness")
def test_collect_dataset_local_engine(tmp_path: Path, farm_factory: FarmFactory) -> None:
    from flows.collect_dataset import collect_dataset

    farm = farm_factory([HostSpec("127.0.0.2", image_bytes=300), HostSpec("127.0.0.3", image_bytes=300,
                                                                           latency_s=0.01)])
    urls = [farm.url(i % 2, f"/f/{i}.png" + ("?fail=404" if i % 23 == 4 else "")) for i in range(90)]
    manifest = write_manifest(tmp_path / "m.parquet", urls, labels=[f"c{i % 3}" for i in range(90)])
    out = tmp_path / "dataset"

    state = collect_dataset(str(manifest), str(out), label_col="label", partitions=3, workers=2,
                            output_format="webdataset", download_options=FAST, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    run_dirs = sorted(out.glob("run-*"))
    assert len(run_dirs) == 1 and result["run"]["rows_new"] == 90
    ledgers = ledgers_of(run_dirs[0])
    assert len(ledgers) == 3
    index = pq.read_table(out / INDEX_FILE).to_pylist()
    assert len(index) == 90 == sum(s["rows"] for s in ledgers)
    for status in ("ok", "failed", "skipped"):
        assert sum(r["status"] == status for r in index) == sum(s[status] for s in ledgers)
    assert sum(r["status"] == "failed" for r in index) == 4  # rows 4, 27, 50, 73: 404
    assert (out / DATASET_FILE).is_file() and list(run_dirs[0].glob("part-*/*.tar"))
    artifacts = flow_run_artifacts(state.state_details.flow_run_id)
    for key in ("dataset-partitions", "slowest-hosts", "most-throttled-hosts", "dataset-summary", "dataset-index"):
        assert key in artifacts, sorted(artifacts)
    assert "progress" in artifacts and artifacts["progress"].data == 100.0
    assert "86 / 90 rows stored" in artifacts["dataset-summary"].data
    assert '"partition": 2' in artifacts["dataset-partitions"].data


@pytest.mark.usefixtures("prefect_harness")
def test_demo_main_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """scripts/demo.sh's flow path: sample hosts, the flow, a summary and where the outputs are;
    a second run is a refresh that fetches nothing again."""
    from flows.demo import main

    assert main(["--out", str(tmp_path), "--rows", "60", "--ephemeral"]) == 0
    first = capsys.readouterr().out
    assert "/60 rows stored" in first and "this run fetched 60 new rows" in first
    assert pq.read_metadata(tmp_path / "dataset" / INDEX_FILE).num_rows == 60
    assert main(["--out", str(tmp_path), "--rows", "60", "--ephemeral"]) == 0
    assert "this run fetched 0 new rows" in capsys.readouterr().out


@pytest.mark.usefixtures("prefect_harness")
def test_a_deployments_defaults_with_a_manifest_of_ones_own(tmp_path: Path, farm_factory: FarmFactory) -> None:
    """`prefect deployment run 'collect-dataset/weekly-refresh' --param manifest=M --param output=D`:
    the deployment's defaults (the demo's) merged with the run's own manifest collect that manifest
    with the flow's defaults, not the demo's settings (its key and label columns). A manifest that
    lacks a column it was asked for fails the run in plan-run once, not once per retry."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.collect_dataset import collect_dataset, demo_parameters

    farm = farm_factory([HostSpec("127.0.0.2", image_bytes=300)])
    manifest = write_manifest(tmp_path / "mine.parquet", [farm.url(0, f"/own/{i}.png") for i in range(12)])
    out = tmp_path / "mine"
    defaults = demo_parameters(str(tmp_path / "demo-dataset"), 50)
    state = collect_dataset(**{**defaults, "manifest": str(manifest), "output": str(out), "download_options": FAST},
                            return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["run"]["rows_new"] == 12
    assert len([p for p in out.glob("run-*/part-*/*.png")]) == 12  # no label column: no label folders

    # The label column too: it failed in distribute, retried, and named the run's temporary copy.
    for column, value in (("key_col", "photo_id"), ("label_col", "species")):
        state = collect_dataset(str(manifest), str(tmp_path / column), **{column: value}, return_state=True)
        assert state.is_failed() and f"column '{value}' not in {manifest}" in str(state.message), state.message
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(
                any_=[state.state_details.flow_run_id])))
        assert [(r.name.rsplit("-", 1)[0], r.run_count) for r in runs] == [("plan-run", 1)]


FARM_PROCESS = """
import json, sys
from flowdc.testing.fakehosts import HostSpec, run_farm_in_thread
with run_farm_in_thread([HostSpec("127.0.0.2", image_bytes=300), HostSpec("127.0.0.3", image_bytes=300)]) as farm:
    print(json.dumps([h.base_url for h in farm.hosts]), flush=True)
    sys.stdin.read()
"""


@pytest.mark.usefixtures("prefect_harness")
def test_collect_dataset_on_work_queue_workers(tmp_path: Path) -> None:
    """The distribute task on the workqueue engine: two real work_queue_worker processes on loopback.
    The fake hosts run in a process of their own: the Work Queue manager's wait holds this
    process's interpreter while it waits, which would starve hosts served from a thread here."""
    pytest.importorskip("work_queue", reason="Work Queue bindings missing (scripts/bootstrap.sh links them)")
    pytest.importorskip("flowdc.distribute", reason="flowdc distribute (the engines) is not in this checkout")
    worker_bin = shutil.which("work_queue_worker")
    if worker_bin is None:
        pytest.skip("work_queue_worker not installed (apt coop-computing-tools)")
    from flows.collect_dataset import collect_dataset

    out = tmp_path / "dataset"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    farm = subprocess.Popen([sys.executable, "-c", FARM_PROCESS], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    workers = []
    try:
        assert farm.stdout is not None
        bases = json.loads(farm.stdout.readline())
        urls = [f"{bases[i % 2]}/wq/{i}.png" + ("?fail=404" if i % 19 == 2 else "") for i in range(60)]
        manifest = write_manifest(tmp_path / "m.parquet", urls)
        for i in range(2):
            (tmp_path / f"w{i}").mkdir()
            workers.append(subprocess.Popen([worker_bin, "--cores", "1", "--timeout", "60", "-s",
                                             str(tmp_path / f"w{i}"), "127.0.0.1", str(port)],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        state = collect_dataset(str(manifest), str(out), partitions=2, engine="workqueue", port_number=port,
                                download_options=FAST, return_state=True)
    finally:
        for proc in workers:
            proc.kill()
            proc.wait(10)
        farm.communicate("", timeout=20)
    assert state.is_completed(), state.message
    (run_dir,) = out.glob("run-*")
    ledgers = ledgers_of(run_dir)
    index = pq.read_table(out / INDEX_FILE).to_pylist()
    assert len(ledgers) == 2 and len(index) == 60 == sum(s["rows"] for s in ledgers)
    assert sum(r["status"] == "ok" for r in index) == sum(s["ok"] for s in ledgers) == 60 - 4
    assert {r["url"] for r in index} == set(urls)

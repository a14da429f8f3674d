"""A distribute run started from the page on two Work Queue workers: each partition's task pushes
its telemetry to the manager's collector, and the page shows both partitions' hosts."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from nicegui import ui
from nicegui.testing import User

from flowdc.config import DownloadConfig, PartitionConfig
from flowdc.partition import run_partition
from flowdc.testing.fakehosts import HostSpec, run_farm_in_thread, write_manifest
from flowdc.ui.context import UiContext, run_kinds
from flowdc.ui.page import REFRESH_S
from flowdc.ui.server import free_port, register

needs = [("distribute" in run_kinds(), "flowdc distribute (engines) is not in this version"),
         ("telemetry_push" in {f.name for f in dataclasses.fields(DownloadConfig)},
          "downloads cannot push telemetry yet (telemetry_push)"),
         (shutil.which("work_queue_worker") is not None, "no work_queue_worker (bootstrap installs it as root)")]
pytestmark = [pytest.mark.skipif(not ok, reason=why) for ok, why in needs] + [pytest.mark.slow]
HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


async def test_two_workqueue_workers_each_partitions_hosts_on_the_page(user: User, tmp_path: Path):
    with run_farm_in_thread([HostSpec(ip, latency_s=0.05) for ip in HOSTS]) as farm, \
            contextlib.ExitStack() as workers:
        urls = [farm.url(i % 3, f"/img/{i:05d}.png") for i in range(240)]
        manifest = write_manifest(tmp_path / "m.parquet", urls)
        run_partition(PartitionConfig(input=str(manifest), output_folder=str(tmp_path / "parts"), groups=2,
                                      quiet=True), progress=False)
        ctx = UiContext(workdir=tmp_path / "ui")
        register(ctx)
        await user.open("/")
        user.find("Configure and run").click()
        (kind,) = user.find(ui.toggle).elements
        kind.value = "distribute"
        port = free_port()
        for name, value in {"input": str(tmp_path / "parts"), "output": str(tmp_path / "out"),
                            "engine": "workqueue", "port_number": str(port), "task_memory_mb": "300",
                            "task_disk_mb": "50", "timeout": "5", "retry_backoff_sec": "0.05"}.items():
            (field,) = user.find(marker=f"field-{name}").elements
            field.value = value
        user.find("Start").click()
        await user.should_see("distribute started")
        for i in range(2):
            folder = tmp_path / f"worker{i}"
            folder.mkdir()
            proc = subprocess.Popen(["work_queue_worker", "--cores", "1", "--single-shot", "--timeout", "30",
                                     "-s", str(folder), "127.0.0.1", str(port)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            workers.callback(proc.wait, 10)
            workers.callback(proc.kill)
        assert ctx.run is not None
        status = await asyncio.to_thread(ctx.run.wait, 150)
        assert status.state == "finished", status.detail
    view = ctx.live.view()
    by_partition: dict[str, set[str]] = {}
    for row in view.rows:
        by_partition.setdefault(row["partition"], set()).add(row["host"].split(":")[0])
    assert len(by_partition) == 2, by_partition  # both partitions' tasks pushed
    assert set().union(*by_partition.values()) == set(HOSTS)
    assert view.totals.ok == 240
    (table,) = user.find(ui.table).elements
    # ... and the page shows them: its table follows the view at the next refresh (twice a second),
    # which may come after the run's last telemetry.
    deadline = time.monotonic() + 5 * REFRESH_S + 2.0
    while {r["partition"] for r in table.rows} != set(by_partition) and time.monotonic() < deadline:
        await asyncio.sleep(REFRESH_S / 2)
    assert {r["partition"] for r in table.rows} == set(by_partition)

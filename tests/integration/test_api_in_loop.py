"""flowdc's Python API called from inside a running event loop, as a notebook's kernel calls it.

The fake hosts serve from a thread of their own (run_farm_in_thread), so a sync call that blocks the
test's loop while it waits still gets its answers.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from flowdc import api
from flowdc.config import DownloadConfig, PartitionConfig, SizeConfig
from flowdc.download import run_download
from flowdc.errors import ConfigError
from flowdc.size import run_size
from flowdc.testing.fakehosts import FakeHostFarm, HostSpec, write_manifest
from tests.integration.conftest import FAST

ROWS = 40


@pytest.fixture
def manifest(tmp_path: Path, farm_factory: Callable[[Sequence[HostSpec]], FakeHostFarm]) -> Path:
    # capacity 2 and 50 ms each: the download lasts over a second, so telemetry snapshots get written
    farm = farm_factory([HostSpec(ip, latency_s=0.05, capacity=2) for ip in ("127.0.0.2", "127.0.0.3")])
    urls = [farm.url(i % 2, f"/img/{i}.png") for i in range(ROWS)]
    return write_manifest(tmp_path / "m.parquet", urls, [f"c{i % 3}" for i in range(ROWS)])


def _dl(manifest: Path, out: Path, **options: object) -> DownloadConfig:
    return DownloadConfig(input=str(manifest), output=str(out), **{**FAST, **options})


async def test_sync_calls_work_inside_a_running_loop(tmp_path: Path, manifest: Path) -> None:
    asyncio.get_running_loop()  # the point of the test: a loop runs in this thread
    overview = run_download(_dl(manifest, tmp_path / "a"))
    assert isinstance(overview, dict) and overview["this_run"]["ok"] == ROWS  # the overview dict, as before

    res = api.download(_dl(manifest, tmp_path / "b", telemetry=str(tmp_path / "t.jsonl")), progress=False)
    assert isinstance(res, api.RunResult) and (res.ok, res.failed, res.interrupted) == (ROWS, 0, False)
    again = api.download(_dl(manifest, tmp_path / "b"), progress=False)  # a rerun resumes: nothing fetched
    assert (again.ok, again.already_done) == (0, ROWS)

    part = api.download_partition(_dl(manifest, tmp_path / "c"), partition_id="00000")
    assert (part.ok, part.partition_id) == (ROWS, "00000")

    report = run_size(SizeConfig(input=str(manifest), report=str(tmp_path / "s1.json"), quiet=True))
    assert report["resolved"] == ROWS
    sized = api.size(SizeConfig(input=str(manifest), report=str(tmp_path / "s2.json"), quiet=True))
    assert isinstance(sized, api.SizeResult)
    assert (sized.rows_total, sized.resolved, sized.estimate_total_bytes) == (ROWS, ROWS, ROWS * 4096)
    assert json.loads(Path(sized.report_path).read_text())["resolved"] == ROWS

    telemetry = api.read_telemetry(tmp_path / "t.jsonl")
    assert {"t", "host", "limit"} <= set(telemetry.columns) and telemetry["host"].n_unique() == 2
    drawn = api.report(tmp_path / "t.jsonl", str(tmp_path / "t.png"))
    assert Path(drawn.path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_async_variants_run_on_the_callers_loop(tmp_path: Path, manifest: Path) -> None:
    loop_thread = threading.current_thread()
    seen: list[threading.Thread] = []
    ticker_ran = asyncio.Event()

    async def ticker() -> None:  # the loop stays free while the download runs on it
        while True:
            ticker_ran.set()
            await asyncio.sleep(0.01)

    tick = asyncio.create_task(ticker())
    try:
        cfg = _dl(manifest, tmp_path / "a")
        res = await api.download_async(cfg, progress=True)  # quiet config: no bar, still fine
        seen.append(threading.current_thread())
        sized = await api.size_async(SizeConfig(input=str(manifest), report=str(tmp_path / "s.json"), quiet=True))
    finally:
        tick.cancel()
    assert ticker_ran.is_set() and seen == [loop_thread]
    assert res.ok == ROWS and sized.resolved == ROWS


async def test_errors_from_the_helper_thread_reach_the_caller(tmp_path: Path) -> None:
    """A bad option raises the one-line ConfigError, never asyncio.run()'s running-loop error."""
    with pytest.raises(ConfigError) as err:
        api.download(DownloadConfig(input=str(tmp_path / "missing.parquet"), output=str(tmp_path / "o"), **FAST))
    assert "running event loop" not in str(err.value)
    with pytest.raises(ConfigError):
        api.size(SizeConfig(input=None, directory=None, quiet=True))


def test_partition_returns_a_typed_plan(tmp_path: Path, manifest: Path) -> None:
    plan = api.partition(PartitionConfig(input=str(manifest), output_folder=str(tmp_path / "parts"), groups=2,
                                         quiet=True))
    assert (plan.total_rows, plan.n_partitions, plan.method) == (ROWS, 2, "host")
    assert all(Path(f).is_file() for f in plan.files) and sum(p["rows"] for p in plan.partitions) == ROWS
    assert json.loads((tmp_path / "parts" / "plan.json").read_text())["n_partitions"] == 2

"""flowdc.api.download_partition: the library call engines make, against fake hosts on loopback."""

from __future__ import annotations

import gc
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from flowdc.api import RunResult, download_partition
from flowdc.config import DownloadConfig
from flowdc.errors import ConfigError
from flowdc.telemetry import HostSnapshot, Telemetry
from flowdc.testing.fakehosts import FakeHostFarm, HostSpec, write_manifest
from tests.integration.conftest import FAST, latest


def _cfg(manifest: Path, out: Path, **options: Any) -> DownloadConfig:
    return DownloadConfig(input=str(manifest), output=str(out), **{**FAST, **options})


def test_two_calls_at_once_in_one_process(tmp_path: Path,
                                          farm_factory: Callable[[Sequence[HostSpec]], FakeHostFarm]) -> None:
    """Two partitions download at the same time from two threads; each gets its own complete
    output and result, and the process's GC settings and signal handlers are left as they were."""
    farm = farm_factory([HostSpec("127.0.0.2", latency_s=0.01, capacity=4),
                         HostSpec("127.0.0.3", latency_s=0.01, capacity=4)])
    gc_before, sigint_before = gc.get_threshold(), signal.getsignal(signal.SIGINT)
    threads_before = {t.name for t in threading.enumerate()}
    barrier = threading.Barrier(2)
    results: dict[int, RunResult] = {}
    spans: dict[int, tuple[float, float]] = {}
    errors: list[BaseException] = []

    def part(i: int) -> None:
        urls = [farm.url(k % 2, f"/p{i}/{k}.png") for k in range(150)]
        manifest = write_manifest(tmp_path / f"part-{i}.parquet", urls)
        cfg = _cfg(manifest, tmp_path / f"out-{i}", concurrent_downloads=8)
        try:
            barrier.wait(10)
            start = time.monotonic()
            results[i] = download_partition(cfg, run_id=f"run-{i}", partition_id=f"{i:05d}")
            spans[i] = (start, time.monotonic())
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=part, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    for i in range(2):
        res = results[i]
        assert (res.ok, res.failed, res.skipped, res.interrupted) == (150, 0, 0, False)
        assert res.totals == {"rows": 150, "ok": 150, "failed": 0, "skipped": 0}
        assert (res.run_id, res.partition_id) == (f"run-{i}", f"{i:05d}")
        assert res.ledger_url == str(tmp_path / f"out-{i}" / "_flowdc" / "ledger")
        assert res.overview_url and Path(res.overview_url).is_file()
        assert set(res.hosts) == {farm.hosts[0].netloc, farm.hosts[1].netloc}
        assert {r["status"] for r in latest(tmp_path / f"out-{i}")} == {"ok"}
        assert all(f"/p{i}/" in r["url"] for r in latest(tmp_path / f"out-{i}"))
    (s0, e0), (s1, e1) = spans[0], spans[1]
    assert s0 < e1 and s1 < e0, "the two downloads did not overlap in time"
    assert gc.get_threshold() == gc_before and gc.get_freeze_count() == 0
    assert signal.getsignal(signal.SIGINT) is sigint_before
    left = {t.name for t in threading.enumerate()} - threads_before
    assert not {n for n in left if n.startswith(("flowdc-writer", "flowdc-hash"))}, left


def test_a_host_budget_of_a_quarter_gives_a_quarter_of_c_max(
        tmp_path: Path, farm_factory: Callable[[Sequence[HostSpec]], FakeHostFarm]) -> None:
    """With C_init = C_max = 8, a share of 0.25 caps host 0 at 2 requests; host 1 keeps 8."""
    farm = farm_factory([HostSpec("127.0.0.2", latency_s=0.03, capacity=16),
                         HostSpec("127.0.0.3", latency_s=0.03, capacity=16)])
    urls = [farm.url(k % 2, f"/b/{k}.png") for k in range(240)]
    manifest = write_manifest(tmp_path / "m.parquet", urls)
    telemetry = Telemetry()
    limits: dict[str, set[int]] = {}
    telemetry.subscribe(lambda snap: isinstance(snap, HostSnapshot)
                        and limits.setdefault(snap.host, set()).add(int(snap.limit or 0)))
    budgeted, free = farm.hosts[0].netloc, farm.hosts[1].netloc
    res = download_partition(_cfg(manifest, tmp_path / "out", concurrent_downloads=32, C_min=1, C_init=8, C_max=8),
                             host_budget={budgeted: 0.25}, telemetry=telemetry)
    assert res.ok == 240
    telemetry.close()  # the subscriber has had every snapshot once this returns
    assert limits[budgeted] and max(limits[budgeted]) == 2, limits
    assert max(limits[free]) == 8, limits
    stats = farm.stats()
    assert stats[budgeted]["max_in_system"] <= 2 < stats[free]["max_in_system"]


def test_host_budget_comes_from_the_config_when_not_given(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """cfg.host_budget (the option engines pass on a task's command line) is used without the kwarg."""
    urls = [two_hosts.url(0, f"/c/{k}.png?slowbody=0.02") for k in range(40)]
    manifest = write_manifest(tmp_path / "m.parquet", urls)
    cfg = _cfg(manifest, tmp_path / "out", enable_paarc=False, C_min=1, C_init=8, C_max=8)
    cfg.host_budget = {two_hosts.hosts[0].netloc: 0.25}  # type: ignore[attr-defined]
    assert download_partition(cfg).ok == 40
    assert two_hosts.stats()[two_hosts.hosts[0].netloc]["max_in_system"] <= 2


def test_a_bad_share_is_a_config_error(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    manifest = write_manifest(tmp_path / "m.parquet", [two_hosts.url(0, "/x.png")])
    with pytest.raises(ConfigError, match="must be a number in"):
        download_partition(_cfg(manifest, tmp_path / "out"), host_budget={"a": 1.5})
    assert not (tmp_path / "out").exists()  # refused before anything was written

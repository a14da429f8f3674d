"""kill -9 loses about a second of fetched work on a local disk, in both output formats.

A run downloads from slow fake hosts at a steady rate, is SIGKILLed mid-run (for webdataset in the
middle of its only shard), and is run again. The rerun may fetch each row the first run did not
keep once; beyond that, no more than one second's worth of the first run's requests (its rate is
measured). Afterwards every row is stored exactly once and every shard reads back whole.
The webdataset run names its shards with a prefix, as distribute does (part-00007-000000.tar):
the open shard and its resume follow that name.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import webdataset as wds

from flowdc.testing.fakehosts import HostSpec
from tests.integration.conftest import (
    REPO,
    latest,
    requested_urls,
    subprocess_env,
    tar_samples,
    temporaries,
    visible_files,
    write_manifest,
)

ROWS = 3000
PREFIX = "part-00007-"
KILL_AFTER_S = 2.5  # of steady downloading, measured from the first request


def wait_until_idle(farm, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while any(st["in_system"] for st in farm.stats().values()) and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.mark.parametrize("fmt", ["imagefolder", "webdataset"])
def test_kill_9_loses_at_most_a_second_of_fetched_work(tmp_path: Path, farm_factory, fmt: str) -> None:  # type: ignore[no-untyped-def]
    farm = farm_factory([HostSpec(f"127.0.0.{i}", latency_s=0.04, image_bytes=800, seed=i) for i in (2, 3, 4)])
    urls = [farm.url(i % 3, f"/d/{i:05d}.png") for i in range(ROWS)]
    manifest = write_manifest(tmp_path / "m.parquet", urls)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "flowdc", "download", "--input", str(manifest), "--output", str(out),
           "--output_format", fmt, "--samples_per_shard", "100000", "--concurrent_downloads", "24",
           "--disable_paarc", "--C_init", "8", "--timeout", "5", "--quiet", "--no_create_tar"]
    if fmt == "webdataset":
        cmd += ["--shard_prefix", PREFIX]
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while farm.totals()["requests"] == 0:
            assert proc.poll() is None, proc.stderr.read()  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.005)
        started = time.monotonic()
        time.sleep(KILL_AFTER_S)
        assert proc.poll() is None, "the run ended before the kill: make it longer"
        proc.kill()
        killed_after = time.monotonic() - started
    finally:
        proc.wait(10)
    assert proc.returncode == -9
    wait_until_idle(farm)
    first = farm.totals()["requests"]
    rate = first / killed_after  # requests per second of the first run
    assert first < ROWS * 0.8, "the kill should come well before the end"
    if fmt == "webdataset":
        assert not list(out.glob("*.tar")), "the open shard is hidden until it is whole"
        assert [p.name for p in out.glob(".*.open")] == [f".{PREFIX}000000.tar.open"]

    for host in farm.hosts:
        host.spec.latency_s = 0.002
    rerun = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    again = farm.totals()["requests"] - first
    refetched = again - (ROWS - first)  # requests beyond one per row the first run never asked for
    assert refetched <= rate * 1.0, f"rerun fetched {refetched} rows again: over a second at {rate:.0f}/s"
    assert max(requested_urls(farm).values()) <= 2

    rows = latest(out)
    assert [r["row"] for r in rows] == list(range(ROWS)) and {r["status"] for r in rows} == {"ok"}
    assert temporaries(out) == []
    ok_keys = {r["key"] for r in rows}
    if fmt == "imagefolder":
        files = [p for p in visible_files(out) if "_flowdc" not in p.parts and p.name != "overview.json"]
        assert sorted(p.stem for p in files) == sorted(ok_keys)
        return
    assert not list(out.glob(".*.open"))
    assert sorted(p.name for p in out.iterdir() if p.is_file() and p.name != "overview.json") == [
        f"{PREFIX}000000.parquet", f"{PREFIX}000000.tar", f"{PREFIX}000000_stats.json"]
    samples = tar_samples(out)  # tarfile reads every member; fails on a key stored twice
    assert set(samples) == ok_keys and all(set(parts) == {"png", "json"} for parts in samples.values())
    read_back = [s["__key__"] for s in wds.WebDataset(sorted(str(p) for p in out.glob("*.tar")),
                                                      shardshuffle=False, empty_check=False)]
    assert sorted(read_back) == sorted(ok_keys)


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A 1-MB tmpfs (root only): a destination that fills up mid-run, and can be grown afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and tmpfs mounts")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.parametrize(("fmt", "disk_mb", "rows"), [("imagefolder", 1, 400), ("webdataset", 1, 400),
                                                     ("webdataset", 16, 3500)])
def test_a_full_disk_stops_the_run_with_one_line_and_a_rerun_resumes(small_disk: Path, tmp_path: Path, farm_factory,
                                                                       fmt: str, disk_mb: int, rows: int) -> None:  # type: ignore[no-untyped-def]
    """No retry helps once the destination is full: the run stops at once with one line that says
    so (exit 1), keeps what it stored, and records the rest as retryable. With room again, the
    rerun stores every row exactly once. The 16-MB disk fills after the write process took over
    the shards (2,048 samples): its error lost the OS error's number on the way, so the run took
    every row's retries (111 s in QA), exited 0, and left a gap in the shard numbers."""
    farm = farm_factory([HostSpec("127.0.0.2", image_bytes=6000), HostSpec("127.0.0.3", image_bytes=6000)])
    urls = [farm.url(i % 2, f"/full/{i:04d}.png") for i in range(rows)]  # 2.4 MB into 1 MB, or 21 MB into 16
    if disk_mb != 1:
        subprocess.run(["mount", "-o", f"remount,size={disk_mb}m", str(small_disk)], check=True)
    manifest = write_manifest(tmp_path / "m.parquet", urls)
    out = small_disk / "out"
    cmd = [sys.executable, "-m", "flowdc", "download", "--input", str(manifest), "--output", str(out),
           "--output_format", fmt, "--samples_per_shard", "50", "--timeout", "5", "--quiet", "--no_create_tar"]
    started = time.monotonic()
    full = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert full.returncode == 1, full.stderr
    assert full.stderr.count("\n") == 1 and "No space left on device" in full.stderr, full.stderr
    assert time.monotonic() - started < 30, "stopped at once, not after every row's retries"
    subprocess.run(["mount", "-o", f"remount,size={disk_mb * 8}m", str(small_disk)], check=True)
    again = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    records = latest(out)
    assert [r["status"] for r in records] == ["ok"] * rows and [r["row"] for r in records] == list(range(rows))
    if fmt == "webdataset":
        counts: dict[str, int] = {}
        for tar in out.glob("*.tar"):
            for sample in wds.WebDataset(str(tar), shardshuffle=False):
                counts[sample["__key__"]] = counts.get(sample["__key__"], 0) + 1
        assert len(counts) == rows and set(counts.values()) == {1}
        shards = sorted(p.name for p in out.glob("*.tar"))
        assert shards == [f"{n:06d}.tar" for n in range(len(shards))], shards  # no gap
    else:
        assert len(list(out.rglob("*.png"))) == rows
    assert not temporaries(out)

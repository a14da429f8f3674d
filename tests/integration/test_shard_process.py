"""The write process in its shard role (flowdc/shard_process.py): a long local webdataset run's
digests, decode checks and tar members are done in a child process, while the writer runs on the
event loop. Its shards must hold exactly what the writer's own writes hold, a failed write must be
the writer's usual per-shard failure, a killed child loses nothing that was recorded, and nothing
is asked of the child while a batch's check is out."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flowdc import child_process, write_process, write_queue
from flowdc.download import DownloadJob
from flowdc.ledger import Record
from flowdc.shard_process import ShardProcess, ShardWriteLane
from flowdc.testing.fakehosts import FakeHostFarm, HostSpec, make_image, write_manifest
from flowdc.writers import webdataset
from flowdc.writers.base import StoredSample
from tests.integration.conftest import (
    download,
    latest,
    mixed_images_manifest,
    requested_urls,
    run_with_a_killed_write_process,
    sha256,
    signal_when,
    size_limited_write_process_script,
    subprocess_env,
    tar_samples,
    temporaries,
)

COMPARED = ("status", "reason", "retryable", "sha256", "width", "height", "image_format", "bytes")


def _member(rec: dict) -> str:
    return rec["path"].split(":", 1)[1] if rec["path"] else ""


def _parquet_rows(out: Path) -> list[dict]:
    rows = [row for shard in sorted(out.glob("*.parquet")) for row in pq.read_table(shard).to_pylist()]
    return sorted(rows, key=lambda row: row["row"])


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.endswith(".open")) + [str(p) for p in temporaries(out)]


def test_the_write_process_writes_the_shards_the_writer_writes_alone(
        tmp_path: Path, two_hosts: FakeHostFarm, monkeypatch: pytest.MonkeyPatch,
        write_children: list[child_process.ChildLink]) -> None:
    manifest = mixed_images_manifest(tmp_path, two_hosts, 60)
    options = {"label": "label", "output_format": "webdataset", "samples_per_shard": 16}
    monkeypatch.setattr(write_process, "START_AFTER", 10**9)
    in_thread = tmp_path / "alone"
    download(manifest, in_thread, **options)
    assert write_children == []

    monkeypatch.setattr(write_process, "START_AFTER", 5)  # the manifest's 62 rows are a "long" run
    monkeypatch.setattr(write_process, "RING_BYTES", 64 * 1024)  # the 300-KB body goes through the pipe
    in_child = tmp_path / "in_child"
    download(manifest, in_child, **options)
    assert len(write_children) == 1

    thread_recs, child_recs = latest(in_thread), latest(in_child)
    assert [{k: r[k] for k in COMPARED} | {"member": _member(r)} for r in child_recs] == [
        {k: r[k] for k in COMPARED} | {"member": _member(r)} for r in thread_recs]
    assert [r["status"] for r in child_recs].count("ok") == 61 and child_recs[60]["reason"] == "not_decodable"
    assert {r["image_format"] for r in child_recs if r["status"] == "ok"} == {"JPEG", "PNG", "WEBP", "GIF"}
    samples = tar_samples(in_child)
    assert samples == tar_samples(in_thread)  # the same members, bytes and .json in both
    assert len(samples) == 61 and len(list(in_child.glob("*.tar"))) == 4
    for rec in child_recs:
        if rec["status"] == "ok":
            parts = samples[rec["key"]]
            assert sha256(parts[_member(rec).split(".", 1)[1]]) == rec["sha256"]
            assert json.loads(parts["json"])["sha256"] == rec["sha256"]
    assert _parquet_rows(in_child) == _parquet_rows(in_thread)
    assert _leftovers(in_child) == []


def test_a_run_of_unknown_length_hands_its_open_shard_over_mid_run(
        tmp_path: Path, two_hosts: FakeHostFarm, monkeypatch: pytest.MonkeyPatch,
        write_children: list[child_process.ChildLink]) -> None:
    """A CSV manifest has no row count to tell a long run by: the writer appends the first samples
    to the shard itself, then the write process appends to the same open shard."""
    urls = [two_hosts.url(i % 2, f"/csv/{i}.png?size={2000 + 37 * i}") for i in range(400)]
    manifest = tmp_path / "m.csv"
    manifest.write_text("url\n" + "\n".join(urls) + "\n")
    monkeypatch.setattr(write_process, "START_AFTER", 100)
    out = tmp_path / "out"
    download(manifest, out, output_format="webdataset", samples_per_shard=1000)
    assert len(write_children) == 1
    recs = latest(out)
    assert [r["status"] for r in recs] == ["ok"] * 400
    assert [p.name for p in out.glob("*.tar")] == ["000000.tar"]
    samples = tar_samples(out)
    assert {key: sha256(parts["png"]) for key, parts in samples.items()} == {r["key"]: r["sha256"] for r in recs}
    assert _leftovers(out) == []


def test_a_killed_write_process_fails_the_run_and_a_rerun_loses_nothing(
        tmp_path: Path, farm_factory: Callable[[Sequence[HostSpec]], FakeHostFarm],
        monkeypatch: pytest.MonkeyPatch, write_children: list[child_process.ChildLink]) -> None:
    monkeypatch.setattr(write_process, "START_AFTER", 1)
    options = {"output_format": "webdataset", "samples_per_shard": 300, "concurrent_downloads": 64}
    farm, manifest, out, first = run_with_a_killed_write_process(
        tmp_path, farm_factory, write_children, lambda out: bool(list(out.glob("0*.tar"))), **options)
    assert 300 <= len(first) < 1500  # the committed shard, and what the open one had synced

    download(manifest, out, **options)
    recs = latest(out)
    assert [r["status"] for r in recs] == ["ok"] * 1500
    assert all(recs[row]["sha256"] == rec["sha256"] for row, rec in first.items())
    samples = tar_samples(out)  # fails on a member stored twice
    assert {key: sha256(parts["png"]) for key, parts in samples.items()} == {r["key"]: r["sha256"] for r in recs}
    assert sum(requested_urls(farm).values()) < 3000 - len(first) + 1  # what was recorded was not fetched again
    assert _leftovers(out) == []


def test_nothing_is_asked_of_the_write_process_while_a_check_is_out() -> None:
    """The child answers in the order asked: a flush sent while a batch's check is out would read
    the check's answer as its own. Refused, and the check's answer is still there to be taken."""
    bodies = [make_image(f"k{i}", "png", 8 + i, 5) for i in range(3)] + [b"not an image"]
    samples = [StoredSample(Record(i, f"k{i}", f"http://h/{i}", "ok"), body, "png", {})
               for i, body in enumerate(bodies)]
    process = ShardProcess("header")
    try:
        process.send_check(samples)
        for ask in (lambda: process.written("flush"), process.drop, lambda: process.send_check(samples)):
            with pytest.raises(RuntimeError, match="checking a batch"):
                ask()
        deadline = time.monotonic() + 30
        while not process.answered():
            assert time.monotonic() < deadline, "the check was never answered"
            time.sleep(0.01)
        process.take_check(samples)
        assert not process.answered()
        assert [s.record.sha256 for s in samples] == [sha256(b) for b in bodies]
        assert [(s.checked, s.record.width, s.record.height) for s in samples[:3]] == [
            (True, 8 + i, 5) for i in range(3)]
        assert not samples[3].checked and samples[3].refused
        assert process.written("flush") == 0  # no shard open: nothing written, and the answer is the flush's
    finally:
        process.shutdown()


def test_a_sync_due_while_a_batch_is_out_waits_for_its_answer(
        tmp_path: Path, two_hosts: FakeHostFarm, monkeypatch: pytest.MonkeyPatch,
        write_children: list[child_process.ChildLink]) -> None:
    """The writer's poll (an appended shard's time to sync) runs on the event loop between batches,
    never while one is out to the child. Here a sync is always due, and a tick comes right after each
    batch is sent."""
    monkeypatch.setattr(write_process, "START_AFTER", 1)
    monkeypatch.setattr(webdataset, "SYNC_SECONDS", 0.0)
    jobs: list[DownloadJob] = []
    real_start = DownloadJob._start_write_process

    def start(job: DownloadJob) -> write_queue.Lane:
        jobs.append(job)
        return real_start(job)
    monkeypatch.setattr(DownloadJob, "_start_write_process", start)
    real_send_next = ShardWriteLane._send_next
    ticks_while_out: list[bool] = []

    def send_next(lane: ShardWriteLane) -> None:
        real_send_next(lane)
        ticks_while_out.append(lane.busy)
        jobs[0]._poll_writer(asyncio.get_running_loop())
    monkeypatch.setattr(ShardWriteLane, "_send_next", send_next)
    real_poll = webdataset.WebDatasetWriter.poll
    polled_while_out: list[bool] = []

    def poll(writer: webdataset.WebDatasetWriter) -> None:
        polled_while_out.append(writer.process is not None and writer.process._checking)
        real_poll(writer)
    monkeypatch.setattr(webdataset.WebDatasetWriter, "poll", poll)

    urls = [two_hosts.url(i % 2, f"/poll/{i}.png?size={3000 + i}") for i in range(300)]
    out = tmp_path / "out"
    download(write_manifest(tmp_path / "m.parquet", urls), out, output_format="webdataset", samples_per_shard=1000)
    assert len(write_children) == 1 and ticks_while_out and all(ticks_while_out)
    assert not any(polled_while_out)
    recs = latest(out)
    assert [r["status"] for r in recs] == ["ok"] * 300
    samples = tar_samples(out)
    assert {key: sha256(parts["png"]) for key, parts in samples.items()} == {r["key"]: r["sha256"] for r in recs}


def test_a_shard_the_write_process_cannot_write(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """A shard past the child's file size limit is lost as a whole, as when the writer thread's
    write fails: its samples are fetched again, and the body that cannot fit ends failed
    (retryable, for the next run). Every sample recorded as ok is in a committed shard."""
    urls = [two_hosts.url(i % 2, f"/lim/{i}.png?size=60000") for i in range(40)]
    urls.append(two_hosts.url(0, "/lim/huge.png?size=1500000"))
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"url": urls}), manifest)
    out = tmp_path / "out"
    script = size_limited_write_process_script(output_format="webdataset", samples_per_shard=4)
    done = subprocess.run([sys.executable, "-c", script, str(manifest), str(out)], capture_output=True, text=True,
                          timeout=180, env=subprocess_env())
    assert done.returncode == 0, done.stderr
    recs = latest(out)
    assert (recs[40]["status"], recs[40]["reason"], recs[40]["retryable"]) == ("failed", "store_error:OSError", True)
    ok = [r for r in recs if r["status"] == "ok"]
    assert len(ok) >= 30  # only the samples that shared a shard with it too often failed
    assert all((r["status"], r["reason"]) == ("failed", "store_error:OSError") for r in recs if r["status"] != "ok")
    samples = tar_samples(out)
    assert {key: sha256(parts["png"]) for key, parts in samples.items()} == {r["key"]: r["sha256"] for r in ok}
    assert _leftovers(out) == []


def _write_children_of(pid: int) -> list[int]:
    """The write processes among `pid`'s children (Linux: /proc lists each thread's children)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with contextlib.suppress(OSError):
                if b"flowdc.write_child" in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.append(int(child))
    return found


def test_ctrl_c_with_the_write_process_commits_what_it_wrote(
        tmp_path: Path, farm_factory: Callable[[Sequence[HostSpec]], FakeHostFarm]) -> None:
    """The CLI on a long run (so the write process starts), stopped by SIGINT: exit code 130, the
    open shard is committed with what the child wrote, and the rerun fetches only the rest."""
    farm = farm_factory([HostSpec("127.0.0.2", latency_s=0.02)])
    urls = [farm.url(0, f"/int/{i}.png?size=2000") for i in range(write_process.START_AFTER + 500)]
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"url": urls}), manifest)
    args = ["download", "--input", str(manifest), "--output", str(tmp_path / "out"), "--quiet", "--disable_paarc",
            "--C_init", "16", "--output_format", "webdataset", "--samples_per_shard", "400"]
    proc = subprocess.Popen([sys.executable, "-m", "flowdc", *args], env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    children: list[int] = []

    def midway() -> bool:  # the write process runs, and 600 requests were made
        children[:] = children or _write_children_of(proc.pid)
        return bool(children) and farm.totals()["requests"] >= 600

    stdout, stderr = signal_when(proc, midway, signal.SIGINT)
    assert len(children) == 1
    assert proc.returncode == 130, stderr
    assert "interrupted" in stdout
    first = [r for r in latest(tmp_path / "out") if r["status"] == "ok"]
    assert 400 < len(first) < len(urls)
    samples = tar_samples(tmp_path / "out")  # committed shards only: the open one was committed too
    assert {r["key"] for r in first} == set(samples)
    assert _leftovers(tmp_path / "out") == []
    requests_before = farm.totals()["requests"]
    rerun = subprocess.run([sys.executable, "-m", "flowdc", *args], env=subprocess_env(), capture_output=True,
                           text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert farm.totals()["requests"] - requests_before == len(urls) - len(first)
    recs = latest(tmp_path / "out")
    samples = tar_samples(tmp_path / "out")
    assert {key: sha256(parts["png"]) for key, parts in samples.items()} == {r["key"]: r["sha256"] for r in recs}
    assert len(samples) == len(urls)

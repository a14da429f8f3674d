"""Never delete, overwrite or corrupt what flowdc did not write (issue 13, items 1-3 and the
read-only output of 8): the ownership mark, --force, one writer per output (local lock, S3/GCS
lease), archive placement, and a read-only output said early.

Real processes where the behaviour is about processes (exit codes, SIGKILL, two runs at once);
moto and the GCS emulator from tests/cloud_servers.py; fake hosts on 127.0.0.x.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from flowdc.errors import OutputInUseError
from flowdc.storage import Destination
from flowdc.testing.fakehosts import FakeHostFarm, HostSpec
from tests.integration.conftest import (
    REPO,
    download,
    latest,
    requested_urls,
    run_flowdc,
    snapshot_tree,
    subprocess_env,
    tar_samples,
    write_manifest,
)
from tests.integration.sinks_helpers import all_files, gcs_options, ledger_latest, s3_options, samples_in_shards
from tests.waiting import wait_for

FarmFactory = Callable[[Sequence[HostSpec]], FakeHostFarm]
# Literal names, not imports: this file must also run (and fail) against a flowdc without them.
MARK = "_flowdc/owner.json"
LEASE_FILE = "_flowdc/lease.json"
QUICK = ["--quiet", "--retry_backoff_sec", "0.05", "--max_retry_attempts", "0", "--no_create_tar"]


def urls_on(farm: FakeHostFarm, n: int, prefix: str) -> list[str]:
    return [farm.url(i % len(farm.hosts), f"/{prefix}/{i:04d}.png?size=600") for i in range(n)]


def user_files(root: Path) -> dict[str, str]:
    """A user's own files: a thesis, notes, a picture in a subfolder and a hidden file."""
    files = {"thesis.docx": "chapter 1", "notes/todo.txt": "read more", "pics/cat.png": "not a png",
             ".hidden": "x"}
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return files


def one_error_line(proc: subprocess.CompletedProcess[str], code: int = 2) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    return lines[0]


def start_flowdc(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "flowdc", "download", *args], cwd=REPO, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def slow_host(farm_factory: FarmFactory) -> FakeHostFarm:
    """One host serving two requests at a time, 0.1 s each: 40 rows take ~2 s. A `?fail=stall`
    URL holds its answer for 15 s: a run that has one stays alive until it is killed."""
    return farm_factory([HostSpec("127.0.0.6", latency_s=0.1, capacity=2, stall_s=15.0)])


def with_a_stall(path: Path, farm: FakeHostFarm, urls: list[str]) -> Path:
    """The manifest `urls` plus one last row that stalls (the rows before it are the same)."""
    return write_manifest(path, [*urls, farm.url(0, "/stall.png?fail=stall")])


# -- 1. ownership and --force ----------------------------------------------------------------------
def test_force_on_a_folder_of_user_files_refuses_and_deletes_nothing(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """An --output that already holds the user's files and no flowdc mark is refused with and
    without --force (one line, exit 2), and not one file is touched; the same for `--output .`."""
    home = tmp_path / "home"
    home.mkdir()
    user_files(home)
    manifest = write_manifest(tmp_path / "m.parquet", urls_on(two_hosts, 4, "own"))
    before = snapshot_tree(home)
    for extra in ([], ["--force"]):
        line = one_error_line(run_flowdc("download", "--input", str(manifest), "--output", str(home), *QUICK, *extra))
        assert "flowdc did not write" in line and "owner.json" in line, line
        assert snapshot_tree(home) == before and not (home / "_flowdc").exists()
    line = one_error_line(run_flowdc("download", "--input", str(manifest), "--output", ".", "--force", *QUICK,
                                     cwd=home))
    assert "flowdc did not write" in line
    assert snapshot_tree(home) == before


def test_force_removes_only_what_flowdc_wrote(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """--force on flowdc's own output removes its samples, class folders, overview, archive and
    ledger; a user's files put inside the output (even inside a class folder) and beside it stay."""
    urls = urls_on(two_hosts, 12, "force")
    manifest = write_manifest(tmp_path / "m.parquet", urls, labels=["cats", "dogs"] * 6)
    out = tmp_path / "data" / "out"
    first = download(manifest, out, label="label", create_tar=True)
    assert first["totals"]["ok"] == 12 and (tmp_path / "data" / "out.tar").is_file()
    assert json.loads((out / MARK).read_text())["tool"] == "flowdc"
    ours = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    (out / "cats" / "my_own_cat.jpg").write_text("mine")  # a user file inside a class folder
    (out / "README.txt").write_text("my notes on this dataset")
    (tmp_path / "data" / "beside.txt").write_text("next to the output")

    forced = download(manifest, out, force=True, output_format="webdataset", samples_per_shard=100)
    assert forced["this_run"]["already_done"] == 0 and forced["totals"]["ok"] == 12
    left = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"cats/my_own_cat.jpg", "README.txt", "beside.txt"} - left == {"beside.txt"}
    assert (tmp_path / "data" / "beside.txt").read_text() == "next to the output"
    assert not (out / "dogs").exists()  # emptied by --force, so removed
    assert not (tmp_path / "data" / "out.tar").exists()  # our archive went too
    old_samples = {f for f in ours if f.startswith(("cats/", "dogs/"))}
    assert len(old_samples) == 12 and not old_samples & left
    assert len(tar_samples(out)) == 12 and sorted(r["status"] for r in latest(out)) == ["ok"] * 12

    # and back: --force removes the shards it recorded, never the user's look-alike
    (out / "000099.tar").write_text("a user's tar named like a shard")
    back = download(manifest, out, force=True, label="label")
    assert back["totals"]["ok"] == 12
    assert (out / "000099.tar").read_text() == "a user's tar named like a shard"
    assert [p.name for p in out.glob("0*.*")] == ["000099.tar"]
    assert (out / "cats" / "my_own_cat.jpg").read_text() == "mine" and (out / "README.txt").is_file()


def test_webdataset_look_alikes_survive_a_rerun_and_force(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """A `000099.tar` and a `000042_stats.json` that flowdc never wrote stay through a plain rerun
    and through --force, and flowdc's own shards are still numbered from 000000 without a gap."""
    manifest = write_manifest(tmp_path / "m.parquet", urls_on(two_hosts, 8, "look"))
    out = tmp_path / "out"
    wds = {"output_format": "webdataset", "samples_per_shard": 4}
    download(manifest, out, **wds)
    mine = {"000099.tar": "a user's tar named like a shard", "000042_stats.json": "my notes"}
    for name, text in mine.items():
        (out / name).write_text(text)
    for extra in ({}, {"force": True}):
        download(manifest, out, **wds, **extra)
        assert {name: (out / name).read_text() for name in mine} == mine, extra
        assert sorted(p.name for p in out.glob("*.tar")) == ["000000.tar", "000001.tar", "000099.tar"], extra
    assert sorted(r["shard"] for r in latest(out)) == [0] * 4 + [1] * 4


def test_an_older_flowdc_output_and_a_run_killed_before_its_first_flush_resume(tmp_path: Path,
                                                                              slow_host: FakeHostFarm) -> None:
    """An output with a ledger but no owner.json (written by an older flowdc) is ours; a run
    SIGKILLed before its first ledger flush left samples and no ledger, and still resumes."""
    urls = urls_on(slow_host, 40, "kill")
    manifest = write_manifest(tmp_path / "m.parquet", urls)
    out = tmp_path / "out"
    proc = start_flowdc("--input", str(manifest), "--output", str(out), *QUICK)
    wait_for("the first samples", lambda: len(list(out.glob("*.png"))) >= 3, 30)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert not list((out / "_flowdc").glob("ledger/*.parquet"))  # killed before any flush
    done = run_flowdc("download", "--input", str(manifest), "--output", str(out), *QUICK)
    assert done.returncode == 0, done.stderr
    assert [r["status"] for r in latest(out)] == ["ok"] * 40

    (out / MARK).unlink()  # as an older flowdc left it: a ledger, no mark
    again = run_flowdc("download", "--input", str(manifest), "--output", str(out), *QUICK)
    assert again.returncode == 0, again.stderr
    assert (out / MARK).is_file()


def test_object_store_prefix_without_the_mark_is_refused(tmp_path: Path, two_hosts: FakeHostFarm, s3_endpoint: str,
                                                         gcs_endpoint: str) -> None:
    """On s3:// and gs:// a prefix holding someone else's objects is refused (with --force too)
    and keeps them; our own prefix loses only what flowdc wrote to --force."""
    from flowdc.errors import OutputNotOursError
    manifest = write_manifest(tmp_path / "m.parquet", urls_on(two_hosts, 6, "cloud"), labels=["a", "b"] * 3)
    stores = (("s3://own-bkt/data", s3_options(s3_endpoint)), ("gs://own-bkt/data", gcs_options(gcs_endpoint)))
    for url, options in stores:
        dest = Destination(url, options)
        dest.fs.mkdir(dest.root.split("/")[0])
        dest.write_bytes("report.pdf", b"someone's report")
        dest.write_bytes("a/figure.png", b"someone's figure")
        for force in (False, True):
            with pytest.raises(OutputNotOursError, match="flowdc did not write"):
                download(manifest, url, storage_options=options, force=force)
            assert all_files(dest) == ["a/figure.png", "report.pdf"], url

        ours = url + "-ours"
        mine = Destination(ours, options)
        assert download(manifest, ours, storage_options=options, label="label")["totals"]["ok"] == 6
        mine.write_bytes("a/user.png", b"user's")
        mine.write_bytes("notes.txt", b"user's notes")
        forced = download(manifest, ours, storage_options=options, output_format="webdataset", force=True)
        assert forced["this_run"]["already_done"] == 0 and forced["totals"]["ok"] == 6
        files = all_files(mine)
        assert "a/user.png" in files and "notes.txt" in files, files
        assert not [f for f in files if f.startswith(("a/0", "b/"))], files


# -- 2. one writer per output ---------------------------------------------------------------------
def test_two_runs_on_one_local_output(tmp_path: Path, slow_host: FakeHostFarm) -> None:
    """Two runs started at once on one output: one stores every sample exactly once, the other
    exits 2 naming the holder. The kernel frees a SIGKILLed holder's lock at once."""
    urls = urls_on(slow_host, 40, "two")
    manifest = write_manifest(tmp_path / "m.parquet", urls)
    out = tmp_path / "out"
    args = ["--input", str(manifest), "--output", str(out), "--output_format", "webdataset",
            "--samples_per_shard", "7", *QUICK]
    procs = [start_flowdc(*args), start_flowdc(*args)]
    results = [(p.wait(120), *p.communicate()) for p in procs]
    codes = sorted(code for code, _out, _err in results)
    assert codes == [0, 2], results
    winner = next(p for p, r in zip(procs, results, strict=True) if r[0] == 0)
    loser_err = next(err for code, _out, err in results if code == 2)
    assert f"pid {winner.pid}" in loser_err and "in use" in loser_err and len(loser_err.strip().splitlines()) == 1
    samples = tar_samples(out)  # fails on any member stored twice
    assert len(samples) == 40 and [r["status"] for r in latest(out)] == ["ok"] * 40

    # A SIGKILLed holder: its lock is free at once.
    out2 = tmp_path / "out2"
    args2 = [a if a != str(out) else str(out2) for a in args]
    stalling = with_a_stall(tmp_path / "stall.parquet", slow_host, urls)
    holder = start_flowdc(*[a if a != str(manifest) else str(stalling) for a in args2])
    wait_for("the lock", lambda: (out2 / "_flowdc" / "lock").is_file()
             and (out2 / "_flowdc" / "lock").stat().st_size > 0, 30)
    busy = run_flowdc("download", *args2)
    assert f"pid {holder.pid}" in one_error_line(busy)
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    done = run_flowdc("download", *args2)
    assert done.returncode == 0, done.stderr
    assert len(tar_samples(out2)) == 40 and [r["status"] for r in latest(out2)] == ["ok"] * 40


def test_two_runs_on_one_s3_prefix_and_a_killed_holders_lease(tmp_path: Path, slow_host: FakeHostFarm,
                                                             s3_endpoint: str) -> None:
    """On one moto prefix: two runs at once, one stores every sample exactly once and the other
    exits 2 naming the holder. A SIGKILLed holder's lease, seen from another machine (another
    process space), refuses others until its TTL has passed since its last heartbeat; on this
    machine its pid is gone, and a rerun takes it over at once and finishes the job."""
    from flowdc.storelease import StoreLease
    options = s3_options(s3_endpoint)
    dest = Destination("s3://lease-bkt/ds", options)
    dest.fs.mkdir("lease-bkt")
    urls = urls_on(slow_host, 40, "s3two")
    manifest = write_manifest(tmp_path / "m.parquet", urls)
    args = ["--input", str(manifest), "--output", "s3://lease-bkt/ds", "--storage_options", json.dumps(options),
            "--output_format", "webdataset", "--samples_per_shard", "7", "--lease_ttl_s", "3", *QUICK]
    procs = [start_flowdc(*args), start_flowdc(*args)]
    results = [(p.wait(120), *p.communicate()) for p in procs]
    assert sorted(code for code, _o, _e in results) == [0, 2], results
    winner = next(p for p, r in zip(procs, results, strict=True) if r[0] == 0)
    loser_err = next(err for code, _o, err in results if code == 2)
    assert f"pid {winner.pid}" in loser_err and "in use" in loser_err, loser_err
    assert set(samples_in_shards(dest).values()) == {1} and len(samples_in_shards(dest)) == 40
    assert [r["status"] for r in ledger_latest(dest)] == ["ok"] * 40
    assert not dest.exists(LEASE_FILE)  # released at the end

    args2 = [a if a != "s3://lease-bkt/ds" else "s3://lease-bkt/ds2" for a in args]
    dest2 = Destination("s3://lease-bkt/ds2", options)
    stalling = with_a_stall(tmp_path / "stall.parquet", slow_host, urls)
    holder = start_flowdc(*[a if a != str(manifest) else str(stalling) for a in args2])
    wait_for("the lease and a first shard", lambda: dest2.exists(LEASE_FILE) and dest2.exists("000000.tar"), 30)
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    killed_at = time.monotonic()
    record = json.loads(dest2.read_bytes(LEASE_FILE))
    assert record["pid"] == holder.pid and record["space"]
    dest2.write_bytes(LEASE_FILE, json.dumps({**record, "space": "another-machine/1"}).encode())
    with pytest.raises(OutputInUseError, match=f"pid {holder.pid}"):  # from elsewhere: well inside the TTL
        StoreLease(dest2, "another-run", ttl_s=3.0)
    dest2.write_bytes(LEASE_FILE, json.dumps(record).encode())
    assert time.monotonic() - killed_at < 2.0  # the rerun starts well inside the TTL...
    done = run_flowdc("download", *args2)
    assert done.returncode == 0, done.stderr
    assert "its process is gone" in done.stderr, done.stderr  # ... and says why it may take over
    counts = samples_in_shards(dest2)
    assert len(counts) == 40 and set(counts.values()) == {1}
    assert [r["status"] for r in ledger_latest(dest2)] == ["ok"] * 40


@pytest.mark.parametrize("store", ["s3", "gs"])
def test_lease_takeover_rules(store: str, s3_endpoint: str, gcs_endpoint: str) -> None:
    """A live lease refuses another run; the same run id (a resubmitted task) takes it over at
    once; a lease whose heartbeat stopped is taken over after its TTL; a holder that lost its
    lease is told. Works per prefix: two partitions' prefixes do not block each other."""
    from flowdc.storelease import StoreLease
    options = s3_options(s3_endpoint) if store == "s3" else gcs_options(gcs_endpoint)
    part0 = Destination(f"{store}://lease-rules/plan/part-00000", options)
    part1 = Destination(f"{store}://lease-rules/plan/part-00001", options)
    with contextlib.suppress(FileExistsError):
        part0.fs.mkdir("lease-rules")
    lost: list[str] = []
    first = StoreLease(part0, "task-7", ttl_s=0.6, on_lost=lost.append)
    other = StoreLease(part1, "task-8", ttl_s=0.6)  # another prefix: no conflict
    with pytest.raises(OutputInUseError, match="run task-7"):
        StoreLease(part0, "task-9", ttl_s=0.6)
    resubmitted = StoreLease(part0, "task-7", ttl_s=0.6)  # same run id: at once
    wait_for("the first holder to notice", lambda: bool(lost), 5)
    assert "lost the lease" in lost[0]
    resubmitted._stop.set()  # its heartbeat stops, as in a killed process
    resubmitted._thread.join()
    with pytest.raises(OutputInUseError):
        StoreLease(part0, "task-9", ttl_s=0.6)
    time.sleep(0.8)
    taker = StoreLease(part0, "task-9", ttl_s=0.6)
    taker.release()
    other.release()
    first.release()  # already lost: must not delete the new holder's (now released) lease
    assert not part0.exists(LEASE_FILE) and not part1.exists(LEASE_FILE)


def test_a_heartbeat_whose_answer_was_lost_keeps_the_lease(s3_endpoint: str) -> None:
    """A heartbeat lands on the store but a reset loses its answer (a flapping endpoint): the next
    one, made with the version before it, meets a conflict. The lease object then holds our own
    heartbeat, so the lease is still ours: renewed from there, and released at the end."""
    from flowdc.conditional import ObjectSlot, Versioned, slot_for
    from flowdc.leases import Holder
    from flowdc.storelease import StoreLease

    class AnswerLost(ObjectSlot):
        """The real S3 slot, whose second and fourth replaces land and then fail as a reset would."""

        def __init__(self, real: ObjectSlot):
            self.real, self.kind, self.replaces = real, real.kind, 0

        def read(self) -> Versioned | None:
            return self.real.read()

        def create(self, data: bytes) -> str:
            return self.real.create(data)

        def replace(self, data: bytes, version: str) -> str:
            self.replaces += 1
            new_version = self.real.replace(data, version)
            if self.replaces in (2, 4):
                raise ConnectionResetError("connection reset by peer")
            return new_version

        def delete(self, version: str) -> None:
            self.real.delete(version)

    dest = Destination("s3://lease-lost-answer/ds", s3_options(s3_endpoint))
    dest.fs.mkdir("lease-lost-answer")
    slot = AnswerLost(slot_for(dest, LEASE_FILE))
    lost: list[str] = []
    lease = StoreLease(dest, "run-1", ttl_s=0.3, on_lost=lost.append, slot=slot)
    wait_for("seven heartbeats", lambda: slot.replaces >= 7, 10)
    assert not lost, lost
    beat = Holder.parse(dest.read_bytes(LEASE_FILE))
    assert beat is not None and beat.run_id == "run-1" and time.time() - beat.heartbeat < 0.3
    lease.release()
    assert not dest.exists(LEASE_FILE)


def test_a_holder_whose_lease_was_taken_over_stops(tmp_path: Path, slow_host: FakeHostFarm, s3_endpoint: str) -> None:
    """When another run has taken the lease (this run's heartbeats had stopped reaching the store
    for a TTL), the holder's next heartbeat finds out: the run stops at once as if interrupted,
    keeps what it stored, and leaves the new holder's lease alone."""
    from flowdc.api import download_partition
    from flowdc.config import DownloadConfig
    from flowdc.leases import Holder

    options = s3_options(s3_endpoint)
    dest = Destination("s3://lost-bkt/ds", options)
    dest.fs.mkdir("lost-bkt")
    manifest = with_a_stall(tmp_path / "m.parquet", slow_host, urls_on(slow_host, 10, "lost"))
    cfg = DownloadConfig(input=str(manifest), output=dest.url(), storage_options=options, lease_ttl_s=0.6,
                         timeout=20.0, max_retry_attempts=0, quiet=True, create_tar=False)
    results: list[Any] = []
    runner = threading.Thread(target=lambda: results.append(download_partition(cfg, run_id="first")))
    runner.start()
    try:
        wait_for("the lease", lambda: dest.exists(LEASE_FILE), 30)
        dest.write_bytes(LEASE_FILE, Holder.me("thief", 60.0).to_bytes())  # as a run that took it over
        stolen_at = time.monotonic()
    finally:
        runner.join(40)
    assert results and results[0].interrupted, results
    assert time.monotonic() - stolen_at < 10  # well before the stalled row's 20 s timeout
    assert json.loads(dest.read_bytes(LEASE_FILE))["run_id"] == "thief"


def test_gcs_conditional_requests_reach_the_emulator(gcs_endpoint: str) -> None:
    """The GCS slot's requests (create, read with its generation, replace and delete with
    ifGenerationMatch) are well formed: the emulator accepts them. It ignores the conditions, so
    this checks their shape only; flowdc's probe sends such a store to the fallback."""
    from flowdc.conditional import GcsSlot, PlainSlot, Versioned, slot_for

    dest = Destination("gs://slot-bkt/x", gcs_options(gcs_endpoint))
    with contextlib.suppress(FileExistsError):
        dest.fs.mkdir("slot-bkt")
    slot = GcsSlot(dest, "_flowdc/lease.json")
    first = slot.create(b"one")
    assert slot.read() == Versioned(b"one", first)
    second = slot.replace(b"two", first)
    assert second != first and slot.read() == Versioned(b"two", second)
    slot.delete(second)
    assert slot.read() is None
    assert isinstance(slot_for(dest, "_flowdc/lease.json"), PlainSlot)


# -- 3. the archive -------------------------------------------------------------------------------
def test_archive_never_overwrites_and_an_empty_run_makes_none(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """A file named OUTPUT.tar that flowdc did not write stays as it is: the archive takes
    OUTPUT.flowdc-2.tar, and the next run replaces that one (its own) rather than a third
    name. A run that stored nothing writes no archive (and leaves no temporary)."""
    manifest = write_manifest(tmp_path / "m.parquet", urls_on(two_hosts, 5, "arch"), labels=["x"] * 5)
    mine = tmp_path / "out.tar"
    mine.write_bytes(b"the user's own backup")
    first = download(manifest, tmp_path / "out", label="label", create_tar=True)
    assert mine.read_bytes() == b"the user's own backup"
    assert first["archive"].endswith("out.flowdc-2.tar")
    assert json.loads((tmp_path / "out" / "overview.json").read_text())["archive"] == first["archive"]
    with tarfile.open(tmp_path / "out.flowdc-2.tar") as tar:
        assert len([n for n in tar.getnames() if n.startswith("out/x/")]) == 5
    download(manifest, tmp_path / "out", label="label", create_tar=True)
    assert sorted(p.name for p in tmp_path.glob("out*.tar")) == ["out.flowdc-2.tar", "out.tar"]
    assert mine.read_bytes() == b"the user's own backup"

    gone = write_manifest(tmp_path / "gone.parquet", [two_hosts.url(0, f"/g/{i}.png?fail=404") for i in range(3)])
    empty = download(gone, tmp_path / "empty", create_tar=True)
    assert empty["totals"]["ok"] == 0 and not empty.get("archive")
    assert not list(tmp_path.glob("empty*.tar*")) and not list(tmp_path.glob(".empty*"))


def test_a_copied_output_leaves_the_originals_archive_alone(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """A copy of a finished output (cp -a) carries the original's archive record, which names the
    original's archive beside it, unchanged. A rerun or --force on the copy writes the copy's own
    archive and never removes the original's."""
    manifest = write_manifest(tmp_path / "m.parquet", urls_on(two_hosts, 4, "copied"), labels=["x"] * 4)
    download(manifest, tmp_path / "orig", label="label", create_tar=True)
    original = (tmp_path / "orig.tar").read_bytes()
    shutil.copytree(tmp_path / "orig", tmp_path / "copy", copy_function=shutil.copy2)
    for force in (False, True):
        overview = download(manifest, tmp_path / "copy", label="label", create_tar=True, force=force)
        assert overview["archive"] == str(tmp_path / "copy.tar"), force
        assert (tmp_path / "orig.tar").read_bytes() == original, force
    with tarfile.open(tmp_path / "copy.tar") as tar:
        assert len([n for n in tar.getnames() if n.startswith("copy/x/")]) == 4


# -- 8. a read-only output ------------------------------------------------------------------------
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("chattr") is None,
                    reason="needs root and chattr: root ignores chmod 555, an immutable folder is the read-only case")
@pytest.mark.parametrize("resumed", [False, True])
def test_read_only_output_says_so_early_and_once(tmp_path: Path, two_hosts: FakeHostFarm, resumed: bool) -> None:
    """An immutable output folder (chattr +i; the same as a read-only mount for a writer) gives
    one line, exit 2, within seconds and with default retry settings, for a new output and for
    a resumed one; nothing is fetched."""
    manifest = write_manifest(tmp_path / "m.parquet", urls_on(two_hosts, 3, f"ro{resumed}"))
    out = tmp_path / "out"
    out.mkdir()
    if resumed:
        download(manifest, out, max_retry_attempts=0)
        write_manifest(manifest, urls_on(two_hosts, 6, f"ro{resumed}"))  # three rows left to fetch
    if subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode != 0:
        pytest.skip("this file system has no immutable attribute")
    try:
        started = time.monotonic()
        proc = run_flowdc("download", "--input", str(manifest), "--output", str(out), "--quiet", timeout=40)
        line = one_error_line(proc)
        assert "refuses writes" in line and time.monotonic() - started < 15, line
    finally:
        subprocess.run(["chattr", "-i", str(out)], check=True)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("chattr") is None,
                    reason="needs root and chattr: root ignores chmod 555, an immutable folder is the read-only case")
def test_a_label_folder_that_refuses_writes_fails_its_rows_without_retries(tmp_path: Path,
                                                                         two_hosts: FakeHostFarm) -> None:
    """One class folder is immutable: its rows fail as store errors (retryable: a later run tries
    them again) after one request each, not after five refetches with backoff; the rest are stored."""
    urls = urls_on(two_hosts, 8, "lockedlabel")
    manifest = write_manifest(tmp_path / "m.parquet", urls, labels=["free", "locked"] * 4)
    out = tmp_path / "out"
    download(write_manifest(tmp_path / "first.parquet", urls[:1], labels=["free"]), out, label="label")
    (out / "locked").mkdir()
    if subprocess.run(["chattr", "+i", str(out / "locked")], capture_output=True).returncode != 0:
        pytest.skip("this file system has no immutable attribute")
    try:
        started = time.monotonic()
        overview = download(manifest, out, label="label", max_retry_attempts=0)
        elapsed = time.monotonic() - started
    finally:
        subprocess.run(["chattr", "-i", str(out / "locked")], check=True)
    records = {r["url"]: r for r in latest(out)}
    assert [records[u]["status"] for u in urls] == ["ok", "failed"] * 4
    assert {records[u]["reason"] for u in urls[1::2]} == {"store_error:PermissionError"}
    assert all(records[u]["retryable"] for u in urls[1::2]) and overview["totals"]["ok"] == 4
    requested = requested_urls(two_hosts)
    assert [requested[u] for u in urls[1::2]] == [1] * 4 and elapsed < 10, (requested, elapsed)

"""Storage sinks end to end: S3 (moto) and GCS (gcp-storage-emulator) as --output, and the
cloud_tool uploaders (real rclone, the gocmd stand-in, a custom command) shipping shards.

Every server is on loopback: moto and the GCS emulator from tests/cloud_servers.py, fake image
hosts from flowdc.testing.fakehosts, and a TcpProxy (sinks_helpers) when S3 has to go away and come back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import signal
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import webdataset as wds

from flowdc.config import DownloadConfig
from flowdc.download import run_download
from flowdc.leases import process_gone
from flowdc.ledger import LEDGER_DIR
from flowdc.storage import Destination, is_unreachable
from flowdc.testing.fakehosts import FakeHostFarm, HostSpec, write_manifest
from flowdc.uploaders import apply_env_changes
from tests.cloud_servers import S3_ACCESS_KEY, gcs_filesystem, s3_filesystem
from tests.integration.conftest import signal_when
from tests.integration.sinks_helpers import (
    TcpProxy,
    all_files,
    committed_shard_files,
    gcs_options,
    iter_bytes_of,
    ledger_latest,
    ledger_records,
    open_multipart_uploads,
    overview,
    partial_names,
    s3_options,
    s3_pipe_url,
    samples_in_shards,
    shard_file_names,
    shard_members,
    shard_metadata_rows,
    webdataset_samples,
)

REPO = Path(__file__).resolve().parents[2]
STAND_INS = REPO / "tests" / "stand_ins"
# Short timeouts and retries, no archive, no progress bar: the runs here are small.
FAST: dict[str, Any] = {"timeout": 5.0, "retry_backoff_sec": 0.05, "quiet": True, "create_tar": False,
                        "max_retry_attempts": 1}
FarmFactory = Callable[[Sequence[HostSpec]], FakeHostFarm]


# -- helpers ------------------------------------------------------------------------------------
def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_manifest(path: Path, farm: FakeHostFarm, tag: str, n: int, *, missing: int = 0, query: str = "") -> list[str]:
    """n image URLs spread over the farm's hosts (labels a/b/c), then `missing` URLs that 404."""
    urls = [farm.url(i % len(farm.hosts), f"{tag}/img{i}.png{query}") for i in range(n)]
    urls += [farm.url(0, f"{tag}/gone{i}.png?fail=404") for i in range(missing)]
    write_manifest(path, urls, labels=["abc"[i % 3] for i in range(len(urls))])
    return urls


def download(manifest: Path, output: str, **options: Any) -> dict[str, Any]:
    cfg = DownloadConfig(input=str(manifest), output=output, **{**FAST, **options})
    cfg.check()
    return run_download(cfg)


def flowdc_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "flowdc", "download", *args]


def child_env(**changes: str | None) -> dict[str, str]:
    """os.environ for a flowdc subprocess, with `changes` applied (None removes a variable)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    apply_env_changes(env, changes)
    return env


def run_cli(args: Sequence[str], env: dict[str, str] | None = None,
            timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(flowdc_argv(*args), capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=env or child_env())


def requested(farm: FakeHostFarm) -> Counter[str]:
    """Full URL (path and query) -> requests the farm answered for it."""
    counts: Counter[str] = Counter()
    for host in farm.hosts:
        for path_qs, n in host.stats["attempts"].items():
            counts[host.base_url + path_qs] = n
    return counts


def check_complete_output(dest: Destination, output_format: str, *, rows: int, ok: int) -> list[dict[str, Any]]:
    """The output holds exactly what the ledger says: overview and ledger present, every ok sample
    stored once with the bytes the ledger hashed, nothing else and nothing half-written."""
    files = all_files(dest)
    assert "overview.json" in files
    assert any(f.startswith(LEDGER_DIR + "/") for f in files)
    assert partial_names(files) == []
    summary = overview(dest)
    assert summary["totals"] == {"rows": rows, "ok": ok, "failed": rows - ok, "skipped": 0}
    latest = ledger_latest(dest)
    assert [r["row"] for r in latest] == list(range(rows))
    good = [r for r in latest if r["status"] == "ok"]
    assert len(good) == ok
    data_files = {f for f in files if not f.startswith("_flowdc/") and f != "overview.json"}
    if output_format == "imagefolder":
        assert data_files == {r["path"] for r in good}
        for rec in good:
            assert sha256(dest.read_bytes(rec["path"])) == rec["sha256"]
        return good
    assert data_files == set(committed_shard_files(dest)), "shard files without a commit (or the reverse)"
    stored: dict[str, bytes] = {}
    for members in shard_members(dest).values():
        for name, data in members:
            if not name.endswith(".json"):
                assert name not in stored, f"{name} stored twice"
                stored[name] = data
    assert {name.rsplit(".", 1)[0] for name in stored} == {r["key"] for r in good}
    by_key = {r["key"]: r for r in good}
    for name, data in stored.items():
        assert sha256(data) == by_key[name.rsplit(".", 1)[0]]["sha256"]
    assert shard_metadata_rows(dest) == ok
    return good


def check_no_loss_no_duplicates(dest: Destination, urls: list[str]) -> None:
    """Every row is ok exactly once: one ok record per row over the committed shards, each sample
    in exactly one tar, and no tar or parquet without its commit."""
    latest = ledger_latest(dest)
    assert len(latest) == len(urls) and all(r["status"] == "ok" for r in latest)
    ok_records = Counter(r["row"] for r in ledger_records(dest) if r["status"] == "ok")
    assert set(ok_records) == set(range(len(urls)))
    assert max(ok_records.values()) == 1, f"rows committed twice: {[r for r, n in ok_records.items() if n > 1]}"
    copies = samples_in_shards(dest)
    assert set(copies) == {r["key"] for r in latest}
    assert max(copies.values()) == 1, f"samples stored twice: {[k for k, n in copies.items() if n > 1]}"
    data_files = {f for f in all_files(dest) if "/" not in f and f.endswith((".tar", ".parquet", "_stats.json"))}
    assert data_files == set(committed_shard_files(dest))
    assert partial_names(all_files(dest)) == []


@pytest.fixture
def farm(farm_factory: FarmFactory) -> FakeHostFarm:
    """Two fake hosts; the second serves 600 KB images, so 20-sample shards exceed 5 MB."""
    return farm_factory([HostSpec("127.0.0.2", image_bytes=4096), HostSpec("127.0.0.3", image_bytes=600_000)])


@pytest.fixture
def slow_farm(farm_factory: FarmFactory) -> FakeHostFarm:
    """Two fake hosts answering after 40 ms, so a run lasts long enough to be hit mid-way."""
    return farm_factory([HostSpec("127.0.0.2", latency_s=0.04), HostSpec("127.0.0.3", latency_s=0.04)])


# -- 1 + 3. full downloads to S3 and GCS, read back with webdataset ------------------------------
@pytest.mark.parametrize("output_format", ["imagefolder", "webdataset"])
def test_full_download_to_s3(s3_endpoint: str, farm: FakeHostFarm, tmp_path: Path, output_format: str) -> None:
    """A download to s3:// stores every ok sample once with the right bytes, plus overview.json and
    the ledger, leaves no temporary names and no unfinished multipart uploads (a 5 MB block size
    sends the ~6 MB shards up in parts); webdataset.WebDataset streaming the shards from the
    bucket through a pipe: URL (s3fs) yields exactly the ok rows."""
    bucket = f"full-s3-{output_format}"
    s3_filesystem(s3_endpoint).mkdir(bucket)
    urls = make_manifest(tmp_path / "m.parquet", farm, bucket, 40, missing=2)
    output = f"s3://{bucket}/run 1"
    options = {**s3_options(s3_endpoint), "default_block_size": 5 * 2**20}
    result = download(tmp_path / "m.parquet", output, output_format=output_format, label="label",
                      samples_per_shard=20, storage_options=options)
    assert result["totals"]["ok"] == 40
    dest = Destination(output, s3_options(s3_endpoint))
    good = check_complete_output(dest, output_format, rows=len(urls), ok=40)
    assert open_multipart_uploads(dest.fs, bucket) == []
    if output_format == "webdataset":
        tars = sorted(f for f in all_files(dest) if f.endswith(".tar"))
        samples = webdataset_samples([s3_pipe_url(s3_endpoint, dest.path(t)) for t in tars])
        assert len(samples) == len(good)
        assert sorted(s["__key__"] for s in samples) == sorted(r["key"] for r in good)
        by_key = {r["key"]: r for r in good}
        for sample in samples:
            assert sha256(sample["png"]) == by_key[sample["__key__"]]["sha256"]
            assert json.loads(sample["json"])["url"] == by_key[sample["__key__"]]["url"]


@pytest.mark.parametrize("output_format", ["imagefolder", "webdataset"])
def test_full_download_to_gcs(gcs_endpoint: str, farm: FakeHostFarm, tmp_path: Path, output_format: str,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The same on gs:// (storage_options endpoint_url + token "anon"); webdataset reads the
    shards from the bucket through fsspec streams (a gs:// gopen handler backed by gcsfs)."""
    bucket = f"full-gcs-{output_format}"
    gcs_filesystem(gcs_endpoint).mkdir(bucket)
    urls = make_manifest(tmp_path / "m.parquet", farm, bucket, 30, missing=1)
    output = f"gs://{bucket}/prefix"
    download(tmp_path / "m.parquet", output, output_format=output_format, label="label", samples_per_shard=8,
             storage_options=gcs_options(gcs_endpoint))
    dest = Destination(output, gcs_options(gcs_endpoint))
    good = check_complete_output(dest, output_format, rows=len(urls), ok=30)
    if output_format == "webdataset":
        fs = gcs_filesystem(gcs_endpoint)
        monkeypatch.setitem(wds.gopen_schemes, "gs", lambda url, mode="rb", bufsize=8192, **kw: fs.open(url, mode))
        tars = sorted(f for f in all_files(dest) if f.endswith(".tar"))
        samples = webdataset_samples([dest.url(t) for t in tars])
        assert len(tars) == 4
        assert sorted(s["__key__"] for s in samples) == sorted(r["key"] for r in good)


# -- 2. SIGKILL mid-run, then resume ------------------------------------------------------------
def test_resume_after_sigkill_on_s3(s3_endpoint: str, slow_farm: FakeHostFarm, tmp_path: Path) -> None:
    """`python -m flowdc download --output s3://...` killed with SIGKILL after some shards are
    committed, then run again: every row ends ok once (no sample lost, none stored twice, no
    shard file without its commit) and the rerun fetched no URL the ledger held as ok.
    The farm stays up across both runs, so every URL is unchanged."""
    bucket = "resume-kill"
    s3_filesystem(s3_endpoint).mkdir(bucket)
    urls = make_manifest(tmp_path / "m.parquet", slow_farm, bucket, 240)
    output = f"s3://{bucket}/ds"
    args = ["--input", str(tmp_path / "m.parquet"), "--output", output, "--output_format", "webdataset",
            "--samples_per_shard", "10", "--storage_options", json.dumps(s3_options(s3_endpoint)), "--quiet",
            "--no_create_tar", "--timeout", "5", "--retry_backoff_sec", "0.05", "--disable_paarc",
            "--C_init", "2", "--concurrent_downloads", "4",
            "--run_id", "resume-kill"]  # the rerun is the same task resubmitted: it takes the lease over at once
    dest = Destination(output, s3_options(s3_endpoint))
    proc = subprocess.Popen(flowdc_argv(*args), cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30  # 3 shards of 3 files
        while len(committed_shard_files(dest)) < 9 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    held_ok = {r["url"] for r in ledger_latest(dest) if r["status"] == "ok"}
    assert 30 <= len(held_ok) < len(urls)
    before = requested(slow_farm)

    rerun = run_cli(args)
    assert rerun.returncode == 0, rerun.stderr
    after = requested(slow_farm)
    assert {u for u in held_ok if after[u] != before[u]} == set(), "the rerun fetched URLs already ok"
    assert {u for u in urls if after[u] == 0} == set()
    check_no_loss_no_duplicates(dest, urls)
    summary = overview(dest)
    assert summary["this_run"]["already_done"] == len(held_ok)
    assert summary["totals"]["ok"] == len(urls)


def test_unfinished_multipart_uploads_of_a_killed_run_are_aborted(s3_endpoint: str, slow_farm: FakeHostFarm,
                                                                 tmp_path: Path) -> None:
    """A run killed while a big shard was uploading leaves an S3 multipart upload open: invisible,
    but kept and billed. The next run into the same output aborts the ones under its prefix, and
    only those (another output in the bucket may be writing)."""
    bucket = "unfinished-uploads"
    fs = s3_filesystem(s3_endpoint)
    fs.mkdir(bucket)
    mine = fs.call_s3("create_multipart_upload", Bucket=bucket, Key="ds/000007.tar")
    fs.call_s3("upload_part", Bucket=bucket, Key="ds/000007.tar", UploadId=mine["UploadId"], PartNumber=1,
               Body=b"x" * 1024)
    fs.call_s3("create_multipart_upload", Bucket=bucket, Key="ds-other/000000.tar")
    urls = make_manifest(tmp_path / "m.parquet", slow_farm, bucket, 12)
    result = download(tmp_path / "m.parquet", f"s3://{bucket}/ds", output_format="webdataset",
                      storage_options=s3_options(s3_endpoint))
    assert result["totals"]["ok"] == len(urls)
    assert result["this_run"]["recovered"]["temporaries_removed"] == 1
    assert [u["Key"] for u in open_multipart_uploads(fs, bucket)] == ["ds-other/000000.tar"]


# -- 4. the S3 endpoint goes away and comes back ------------------------------------------------
# Short botocore timeouts and one botocore attempt per call, so an outage reaches the product
# within ~2 s (s3fs still retries 5 times, aiohttp resends an idempotent request once), which
# must then fetch the lost shard's samples again later in the run.
SHORT_S3 = {"connect_timeout": 1, "read_timeout": 3, "retries": {"total_max_attempts": 1}}


def bucket_behind_proxy(s3_endpoint: str, farm: FakeHostFarm, tmp_path: Path, bucket: str) -> tuple[
        list[str], TcpProxy, str]:
    """A fresh bucket, a 200-row manifest for it, and a TCP proxy to moto that a test can cut."""
    s3_filesystem(s3_endpoint).mkdir(bucket)
    urls = make_manifest(tmp_path / "m.parquet", farm, bucket, 200)
    host, port = urlsplit(s3_endpoint).hostname, urlsplit(s3_endpoint).port
    assert host and port
    return urls, TcpProxy((host, port)).start(), f"s3://{bucket}/ds"


def test_s3_outage_mid_run_is_ridden_out(s3_endpoint: str, slow_farm: FakeHostFarm, tmp_path: Path) -> None:
    """S3 (behind a TCP proxy) refuses and resets every connection for 4 s in the middle of a
    webdataset run, then comes back: the run completes with every row ok exactly once, the
    shards lost in the outage were fetched again (retries > 0), and no uncommitted shard stays."""
    bucket = "outage-once"
    urls, proxy, output = bucket_behind_proxy(s3_endpoint, slow_farm, tmp_path, bucket)
    dest = Destination(output, s3_options(s3_endpoint))  # straight to moto, to watch the run
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["overview"] = download(tmp_path / "m.parquet", output, output_format="webdataset",
                                          samples_per_shard=10, enable_paarc=False, C_init=2, concurrent_downloads=4,
                                          storage_options=s3_options(proxy.endpoint, **SHORT_S3))
        except Exception as exc:  # reported below
            result["error"] = exc

    worker = threading.Thread(target=run)
    try:
        worker.start()
        deadline = time.monotonic() + 30  # 2 shards of 3 files
        while len(committed_shard_files(dest)) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        proxy.cut()
        time.sleep(4)
        proxy.restore()
        worker.join(90)
    finally:
        proxy.stop()
    assert not worker.is_alive()
    assert "error" not in result, result.get("error")
    this_run = result["overview"]["this_run"]
    assert result["overview"]["totals"]["ok"] == len(urls)
    assert this_run["retries"] > 0, "the outage never reached the product"
    check_no_loss_no_duplicates(dest, urls)
    assert open_multipart_uploads(dest.fs, bucket) == []


@pytest.mark.parametrize("when", ["before", "after"])
def test_s3_shard_commit_broken(s3_endpoint: str, slow_farm: FakeHostFarm, tmp_path: Path, when: str) -> None:
    """Every PUT of one shard's ledger part loses its connection until the writer gives the shard
    up, either before S3 sees it (the tar and parquet are in place, the commit is not) or after S3
    stored it (committed, but the writer sees an error). Either way the run completes with every
    row ok exactly once and no shard file without its commit: the writer removes the shard and
    fetches its samples again, and a later shard takes its number (the shards stay 0..N).
    The refetch uses the real URLs, though the records hold redacted ones: here `size`, which the
    host needs, is a redacted parameter."""
    bucket = f"commit-broken-{when}"
    s3_filesystem(s3_endpoint).mkdir(bucket)
    urls = make_manifest(tmp_path / "m.parquet", slow_farm, bucket, 60, query="?size=700")
    host, port = urlsplit(s3_endpoint).hostname, urlsplit(s3_endpoint).port
    assert host and port
    proxy = TcpProxy((host, port)).start()
    proxy.break_requests(f"PUT /{bucket}/ds/{LEDGER_DIR}/shard-000002.parquet".encode(), after_server=when == "after",
                         until=b"<Key>ds/000002_stats.json</Key>")  # the writer removes the shard: S3 is back
    output = f"s3://{bucket}/ds"
    try:
        result = download(tmp_path / "m.parquet", output, output_format="webdataset", samples_per_shard=10,
                          enable_paarc=False, C_init=2, concurrent_downloads=4, redact_params=["size"],
                          storage_options=s3_options(proxy.endpoint, **SHORT_S3))
    finally:
        proxy.stop()
    assert proxy.broken_requests >= 1
    assert result["totals"]["ok"] == len(urls)
    assert result["this_run"]["retries"] >= 10  # shard 2's samples, fetched again
    dest = Destination(output, s3_options(s3_endpoint))
    shards = sorted(n for n in dest.list() if n.endswith(".tar"))
    assert shards == [f"{n:06d}.tar" for n in range(len(shards))], shards  # no gap where 000002 was dropped
    check_no_loss_no_duplicates(dest, urls)
    assert {r["url"].rsplit("?", 1)[1] for r in ledger_latest(dest)} == {"size=***"}
    assert {r["bytes"] for r in ledger_latest(dest)} == {700}


def test_an_unreachable_store_leaves_its_unfinished_uploads_for_the_next_run_without_a_warning(
        s3_endpoint: str, farm: FakeHostFarm, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Each run starts by aborting unfinished multipart uploads. With S3 unreachable at that moment,
    the run's next call to the store fails with the run's one error line (or finds S3 back), and the
    next run aborts them: a warning before that one line only made it two (seen in the flapping test)."""
    _, proxy, output = bucket_behind_proxy(s3_endpoint, farm, tmp_path, "abort-cut")
    try:
        proxy.cut()
        dest = Destination(output, s3_options(proxy.endpoint, **SHORT_S3))
        with caplog.at_level(logging.DEBUG, logger="flowdc.storage"):
            assert dest.remove_temporaries() == 0
    finally:
        proxy.stop()
    (record,) = [r for r in caplog.records if "could not abort unfinished uploads" in r.getMessage()]
    assert record.levelno == logging.DEBUG, record.getMessage()


def test_unreachable_names_the_errors_of_a_store_that_did_not_answer() -> None:
    import botocore.exceptions as boto

    assert is_unreachable(boto.EndpointConnectionError(endpoint_url="http://127.0.0.1:9"))
    assert is_unreachable(boto.ReadTimeoutError(endpoint_url="http://127.0.0.1:9"))
    assert is_unreachable(ConnectionResetError())
    assert not is_unreachable(PermissionError("AccessDenied"))
    assert not is_unreachable(boto.NoCredentialsError())


def test_s3_flapping_endpoint_then_rerun(s3_endpoint: str, slow_farm: FakeHostFarm, tmp_path: Path) -> None:
    """S3 goes away and comes back over and over (cuts of 0.1-0.5 s, reset connections mid-request)
    for the whole CLI run. The run either completes or stops with one clear error line, its last
    (no traceback); the rerun with S3 up completes, and then every row is ok exactly once: a shard
    whose commit failed (even one whose ledger part reached S3 before the reset) is removed
    before its samples are stored again."""
    urls, proxy, output = bucket_behind_proxy(s3_endpoint, slow_farm, tmp_path, "outage-flap")
    common = ["--input", str(tmp_path / "m.parquet"), "--output", output, "--output_format", "webdataset",
              "--samples_per_shard", "5", "--quiet", "--no_create_tar", "--timeout", "5",
              "--retry_backoff_sec", "0.05", "--disable_paarc", "--C_init", "4", "--concurrent_downloads", "8",
              "--lease_ttl_s", "2"]
    flapping = threading.Event()
    rng = random.Random(7)

    def flap() -> None:
        while not flapping.wait(rng.uniform(0.1, 0.4)):
            proxy.cut()
            time.sleep(rng.uniform(0.1, 0.5))
            proxy.restore()

    flapper = threading.Thread(target=flap)
    try:
        flapper.start()
        first = run_cli([*common, "--storage_options", json.dumps(s3_options(proxy.endpoint, **SHORT_S3))],
                        timeout=120)
    finally:
        flapping.set()
        flapper.join(5)
        proxy.stop()
    assert "Traceback" not in first.stderr, first.stderr[-3000:]
    assert first.returncode in (0, 1), first.stderr[-3000:]
    if first.returncode == 1:
        # One error line, the last; a warning the run gave at its start (a manifest column named
        # like a sample field, here `label`) may come before it.
        lines = first.stderr.splitlines()
        assert lines[-1].startswith("flowdc: error: "), first.stderr
        assert not [line for line in lines[:-1] if "error" in line.lower()], first.stderr
        # A run the outage stopped may not have been able to release its lease: as documented, the
        # next run may take it over once its TTL has passed since the last heartbeat.
        time.sleep(2.5)
    second = run_cli([*common, "--storage_options", json.dumps(s3_options(s3_endpoint))])
    assert second.returncode == 0, second.stderr
    dest = Destination(output, s3_options(s3_endpoint))
    check_no_loss_no_duplicates(dest, urls)


# -- 5. rclone ships finished shards ------------------------------------------------------------
def rclone_s3_env(endpoint: str, name: str = "MYS3") -> dict[str, str]:
    return {f"RCLONE_CONFIG_{name}_TYPE": "s3", f"RCLONE_CONFIG_{name}_PROVIDER": "Other",
            f"RCLONE_CONFIG_{name}_ENDPOINT": endpoint, f"RCLONE_CONFIG_{name}_ACCESS_KEY_ID": S3_ACCESS_KEY,
            f"RCLONE_CONFIG_{name}_SECRET_ACCESS_KEY": s3_options(endpoint)["secret"]}


def staged_shards(staging: Path) -> list[str]:
    return sorted(p.name for p in staging.iterdir()
                  if p.suffix in (".tar", ".parquet") or p.name.endswith("_stats.json"))


@pytest.mark.parametrize("remote", ["local folder", "s3"])
def test_rclone_ships_shards(s3_endpoint: str, farm: FakeHostFarm, tmp_path: Path, remote: str,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    """cloud_tool rclone (the real Debian rclone) uploads each committed shard to a local folder or
    to S3 on moto (RCLONE_CONFIG_MYS3_* env; AWS_CA_BUNDLE stays set here and the uploader drops
    it for rclone), removes the local staging copies only after the upload, copies overview.json,
    and the shipped shards read back whole."""
    make_manifest(tmp_path / "m.parquet", farm, f"rclone-{remote[:2]}", 24)
    staging = tmp_path / "staging"
    if remote == "s3":
        s3_filesystem(s3_endpoint).mkdir("rclone-ship")
        for key, value in rclone_s3_env(s3_endpoint).items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("AWS_CA_BUNDLE", os.environ.get("AWS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt"))
        destination, shipped = "mys3:rclone-ship/run 1", Destination("s3://rclone-ship/run 1", s3_options(s3_endpoint))
    else:
        destination, shipped = str(tmp_path / "remote side"), Destination(str(tmp_path / "remote side"))
    result = download(tmp_path / "m.parquet", str(staging), output_format="webdataset", samples_per_shard=10,
                      cloud_tool="rclone", cloud_destination=destination)
    assert result["uploads"]["failed"] == []
    assert sorted(all_files(shipped)) == sorted([*shard_file_names(3), "overview.json"])
    assert staged_shards(staging) == []  # removed after the confirmed upload
    assert (staging / "overview.json").is_file() and (staging / LEDGER_DIR).is_dir()
    copies = samples_in_shards(shipped)
    assert len(copies) == 24 and max(copies.values()) == 1
    assert partial_names(all_files(shipped)) == []


def test_rclone_failed_upload_keeps_shards_for_next_run(farm: FakeHostFarm, tmp_path: Path) -> None:
    """While the rclone destination cannot be written (a file blocks its folder), every upload
    fails after the uploader's retries and the shards stay in staging; the next run, with the
    destination fixed, ships exactly those leftovers (ship_leftovers) and fetches nothing again."""
    make_manifest(tmp_path / "m.parquet", farm, "rclone-fail", 16)
    staging, remote = tmp_path / "staging", tmp_path / "remote"
    remote.write_text("a file where the remote folder should be")
    # No overview.json: shipping it would fail too, and add another round of upload retries (7 s).
    options = {"output_format": "webdataset", "samples_per_shard": 8, "cloud_tool": "rclone",
               "cloud_destination": str(remote / "shards"), "create_overview": False}
    first = download(tmp_path / "m.parquet", str(staging), **options)
    assert first["totals"]["ok"] == 16
    assert sorted(first["uploads"]["failed"]) == shard_file_names(2)
    kept = staged_shards(staging)
    assert kept == shard_file_names(2)
    before = requested(farm)

    remote.unlink()
    second = download(tmp_path / "m.parquet", str(staging), **options)
    assert second["this_run"]["recovered"]["shards_left_to_ship"] == 2
    assert second["uploads"]["failed"] == []
    assert staged_shards(staging) == []
    assert sorted(p.name for p in (remote / "shards").iterdir()) == kept
    assert requested(farm) == before  # nothing fetched again
    assert sum(samples_in_shards(Destination(str(remote / "shards"))).values()) == 16


# -- 6. gocmd (stand-in) and a custom command ---------------------------------------------------
def test_gocmd_standin_ships_shards(farm: FakeHostFarm, tmp_path: Path) -> None:
    """cloud_tool gocmd through the CLI, against tests/stand_ins/gocmd: a STAND-IN, not CyVerse's
    gocmd. No iRODS server and no gocmd can be installed on this machine, so the stand-in checks
    the argv (`gocmd put -f LOCAL /zone/path/NAME`) and copies the file to $GOCMD_STANDIN_ROOT +
    the iRODS path. Every shard lands there whole and leaves staging."""
    make_manifest(tmp_path / "m.parquet", farm, "gocmd", 20)
    irods, staging = tmp_path / "irods", tmp_path / "staging"
    irods.mkdir()
    env = child_env(PATH=f"{STAND_INS}{os.pathsep}{os.environ['PATH']}", GOCMD_STANDIN_ROOT=str(irods),
                    GOCMD_STANDIN_LOG=str(tmp_path / "argv.jsonl"), GOCMD_STANDIN_FAIL_FIRST=None)
    done = run_cli(["--input", str(tmp_path / "m.parquet"), "--output", str(staging), "--output_format", "webdataset",
                    "--samples_per_shard", "10", "--quiet", "--no_create_tar", "--cloud_tool", "gocmd",
                    "--cloud_destination", "/iplant/home/alice/flow dc"], env=env)
    assert done.returncode == 0, done.stderr
    landed = irods / "iplant/home/alice/flow dc"
    assert sorted(p.name for p in landed.iterdir()) == sorted([*shard_file_names(2), "overview.json"])
    assert staged_shards(staging) == []
    calls = [json.loads(line) for line in (tmp_path / "argv.jsonl").read_text().splitlines()]
    assert ["put", "-f", str(staging / "000000.tar"), "/iplant/home/alice/flow dc/000000.tar"] in calls
    assert sum(samples_in_shards(Destination(str(landed))).values()) == 20


def test_cloud_args_env_and_retries_reach_the_tool(farm: FakeHostFarm, tmp_path: Path) -> None:
    """cloud_args go before the local file, cloud_env reaches the tool (here the stand-in's PATH and
    settings, none of them in this process's environment) and stays out of overview.json, and
    cloud_retries 0 makes one failure final: the file stays, exit 1, and the next run ships it."""
    make_manifest(tmp_path / "m.parquet", farm, "cloud-options", 10)
    irods, staging = tmp_path / "irods", tmp_path / "staging"
    irods.mkdir()
    tool_env = {"PATH": f"{STAND_INS}{os.pathsep}{os.environ['PATH']}", "GOCMD_STANDIN_ROOT": str(irods),
                "GOCMD_STANDIN_LOG": str(tmp_path / "argv.jsonl"), "GOCMD_STANDIN_FAIL_FIRST": "1",
                "IRODS_USER_PASSWORD": "s3cr3t-pw"}
    argv = ["--input", str(tmp_path / "m.parquet"), "--output", str(staging), "--output_format", "webdataset",
            "--samples_per_shard", "10", "--quiet", "--no_create_tar", "--no_create_overview", "--cloud_tool",
            "gocmd", "--cloud_destination", "/zone/home/alice/run", "--cloud_args=-R,fastResc",
            "--cloud_env", json.dumps(tool_env)]
    env = child_env(GOCMD_STANDIN_ROOT=None, GOCMD_STANDIN_LOG=None, GOCMD_STANDIN_FAIL_FIRST=None)
    first = run_cli([*argv, "--cloud_retries", "0"], env=env)
    assert first.returncode == 1, first.stderr
    (kept,) = staged_shards(staging)  # the shard's first file failed once, for good; the others shipped
    assert kept in shard_file_names(1)
    second = run_cli([*argv, "--cloud_retries", "2", "--create_overview"], env=env)
    assert second.returncode == 0, second.stderr
    assert staged_shards(staging) == []
    assert sorted(p.name for p in (irods / "zone/home/alice/run").iterdir()) == sorted(
        [*shard_file_names(1), "overview.json"])
    calls = [json.loads(line) for line in (tmp_path / "argv.jsonl").read_text().splitlines()]
    assert calls[-1] == ["put", "-f", "-R", "fastResc", str(staging / "overview.json"),
                         "/zone/home/alice/run/overview.json"]
    overview = (staging / "overview.json").read_text()
    assert "s3cr3t-pw" not in overview and json.loads(overview)["config"]["cloud_env"] == sorted(tool_env)


def test_image_key_auto_is_kept_when_the_shards_were_shipped(farm: FakeHostFarm, tmp_path: Path) -> None:
    """One image key per dataset: auto reads it back from the first shard on a rerun. With
    cloud_tool the shards were shipped and are gone from the output, so the ledger says it: a
    refresh whose new rows are JPEGs still stores them as .png (the dataset mixed both)."""
    pngs = [farm.url(i % 2, f"/key/p{i}.png") for i in range(4)]
    jpegs = [farm.url(i % 2, f"/key/j{i}.jpg?fmt=jpeg&w=16&h=16") for i in range(3)]
    remote, staging = tmp_path / "remote", tmp_path / "staging"
    options = {"output_format": "webdataset", "samples_per_shard": 10, "create_overview": False,
               "cloud_tool": "custom", "cloud_destination": str(remote),
               "cloud_command": ["sh", "-c", 'mkdir -p "$2" && cp "$1" "$2/$3"', "up", "{file}", "{destination}",
                                 "{name}"]}
    download(write_manifest(tmp_path / "m1.parquet", pngs), str(staging), **options)
    assert staged_shards(staging) == []  # shipped: nothing left to read the key from
    second = download(write_manifest(tmp_path / "m2.parquet", pngs + jpegs), str(staging), **options)
    assert second["this_run"]["ok"] == 3
    members = [name for shard in shard_members(Destination(str(remote))).values() for name, _ in shard]
    assert len(members) == 14 and {m.rpartition(".")[2] for m in members} == {"png", "json"}, members


def test_sigterm_stops_a_run_whose_upload_hangs(farm: FakeHostFarm, tmp_path: Path) -> None:
    """An upload command that hangs (a tool waiting on a network it cannot reach) held a stopped
    run for its timeout_s times its attempts, and its process outlived the run. SIGTERM now ends
    the run at once, kills the upload's process group, and the shard stays in the staging folder
    for the next run to ship."""
    make_manifest(tmp_path / "m.parquet", farm, "hang", 6)
    staging, pid_file = tmp_path / "staging", tmp_path / "upload.pid"
    command = ["sh", "-c", 'echo $$ > "$1"; exec sleep 120', "up", str(pid_file), "{file}"]
    proc = subprocess.Popen(flowdc_argv("--input", str(tmp_path / "m.parquet"), "--output", str(staging), "--quiet",
                                        "--output_format", "webdataset", "--no_create_tar", "--cloud_tool", "custom",
                                        "--cloud_destination", "nowhere", "--cloud_command", json.dumps(command)),
                            cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = signal_when(proc, pid_file.exists, signal.SIGTERM, wait_s=30, exit_s=20)
    assert pid_file.exists(), "no upload started"
    assert proc.returncode == 130, out + err
    assert process_gone(int(pid_file.read_text()))  # killed with its group, not left running
    assert "000000.tar" in staged_shards(staging) and "not shipped with custom" in out


def test_custom_cloud_command_with_spaces(farm: FakeHostFarm, tmp_path: Path) -> None:
    """cloud_tool custom from a JSON config: the uploader program lives in a folder with spaces and
    copies to a destination with spaces; argv is passed without a shell, so both arrive intact."""
    make_manifest(tmp_path / "m.parquet", farm, "custom", 12)
    tools = tmp_path / "my tools"
    tools.mkdir()
    script = tools / "up load.sh"
    script.write_text('#!/bin/sh\nset -e\nmkdir -p "$2"\ncp "$1" "$2/$3.part"\nmv "$2/$3.part" "$2/$3"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    remote, staging = tmp_path / "remote store", tmp_path / "staging area"
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "input": str(tmp_path / "m.parquet"), "output": str(staging), "output_format": "webdataset",
        "samples_per_shard": 5, "quiet": True, "create_tar": False, "cloud_tool": "custom",
        "cloud_destination": str(remote / "data set"),
        "cloud_command": [str(script), "{file}", "{destination}", "{name}"],
    }))
    done = run_cli(["--config", str(config)])
    assert done.returncode == 0, done.stderr
    landed = remote / "data set"
    assert sorted(p.name for p in landed.iterdir()) == sorted([*shard_file_names(3), "overview.json"])
    assert staged_shards(staging) == []
    assert sum(samples_in_shards(Destination(str(landed))).values()) == 12


# -- 7. secrets never reach an output or a log --------------------------------------------------
ENV_SECRET = "EnvSecret-QRS-789"
OPTION_SECRET = "SuperSecret-XYZ-123"


def test_no_secret_in_outputs_or_logs(s3_endpoint: str, farm_factory: FarmFactory, tmp_path: Path) -> None:
    """With AWS_SECRET_ACCESS_KEY in the environment and `secret` in --storage_options, neither
    value appears in any object of the bucket (overview.json, ledger parquet bytes, shards), in
    the --telemetry file, or in stdout/stderr: of good runs in both formats, and of runs whose
    bucket is missing (which end with one error line)."""
    bucket = "no-secrets"
    s3_filesystem(s3_endpoint).mkdir(bucket)
    # Slow enough (100 ms a request, 2 at a time) for the telemetry snapshots to be written.
    farm = farm_factory([HostSpec("127.0.0.2", latency_s=0.1), HostSpec("127.0.0.3", latency_s=0.1)])
    make_manifest(tmp_path / "m.parquet", farm, bucket, 14, missing=2)
    env = child_env(AWS_SECRET_ACCESS_KEY=ENV_SECRET, AWS_ACCESS_KEY_ID="flowdc-env-key")
    options = json.dumps(s3_options(s3_endpoint, secret=OPTION_SECRET))
    telemetry = tmp_path / "telemetry.jsonl"
    outputs = []
    for fmt in ("webdataset", "imagefolder"):
        done = run_cli(["--input", str(tmp_path / "m.parquet"), "--output", f"s3://{bucket}/{fmt}", "--output_format",
                        fmt, "--storage_options", options, "--telemetry", str(telemetry), "--no_create_tar",
                        "--max_retry_attempts", "0", "--retry_backoff_sec", "0.01", "--disable_paarc", "--C_init", "2",
                        "--concurrent_downloads", "2"], env=env)
        assert done.returncode == 0, done.stderr
        outputs += [done.stdout, done.stderr]
    for fmt in ("webdataset", "imagefolder"):
        missing = run_cli(["--input", str(tmp_path / "m.parquet"), "--output", "s3://no-such-bucket/x",
                           "--output_format", fmt, "--storage_options", options, "--quiet",
                           "--retry_backoff_sec", "0.01"], env=env)
        assert missing.returncode == 1, missing.stderr
        assert missing.stderr.startswith("flowdc: error: ") and missing.stderr.count("\n") == 1, missing.stderr
        outputs += [missing.stdout, missing.stderr]
    dest = Destination(f"s3://{bucket}", s3_options(s3_endpoint))
    scanned = list(iter_bytes_of(dest, [str(telemetry)]))
    assert any(name.endswith(".tar") for name, _ in scanned)
    assert any("/_flowdc/ledger/" in name and name.endswith("(decoded)") for name, _ in scanned)
    assert telemetry.stat().st_size > 0
    for secret in (ENV_SECRET, OPTION_SECRET):
        needle = secret.encode()
        assert [name for name, data in scanned if needle in data] == []
        assert [text for text in outputs if secret in text] == []
    assert "secret" in overview(Destination(f"s3://{bucket}/webdataset", s3_options(s3_endpoint)))["config"][
        "storage_options"]  # the option's name is recorded, its value is not

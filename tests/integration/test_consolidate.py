"""Consolidate: real partition ledgers, made by real downloads from fake hosts on loopback, merged
into one dataset index and a dataset overview."""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from flowdc.cli import main
from flowdc.consolidate import DATASET_FILE, INDEX_FILE, consolidate
from flowdc.identity import idents
from flowdc.ledger import Ledger
from flowdc.storage import Destination
from flowdc.testing.fakehosts import FakeHostFarm, HostSpec
from tests.cloud_servers import s3_filesystem
from tests.integration.conftest import download, free_port, run_flowdc, write_manifest
from tests.integration.sinks_helpers import s3_options

FarmFactory = Callable[[Sequence[HostSpec]], FakeHostFarm]


def split_manifest(tmp_path: Path, farm: FakeHostFarm, rows: int, parts: int) -> list[tuple[Path, list[str]]]:
    """`parts` manifests keeping the whole manifest's row numbers (as `flowdc partition` does)."""
    urls = []
    for i in range(rows):
        fault = "?fail=404" if i % 17 == 3 else "?fail=503" if i % 29 == 5 else ""
        urls.append(farm.url(i % len(farm.hosts), f"/c/{i:04d}.png{fault}"))
    out = []
    for p in range(parts):
        mine = list(range(p, rows, parts))
        path = write_manifest(tmp_path / f"part-{p:05d}.parquet", [urls[i] for i in mine],
                              labels=[f"class_{i % 3}" for i in mine], extra_columns={"row": mine})
        out.append((path, [urls[i] for i in mine]))
    return out


@pytest.mark.parametrize("output_format", ["imagefolder", "webdataset"])
def test_index_of_partitions_matches_their_ledgers(tmp_path: Path, farm_factory: FarmFactory,
                                                   output_format: str) -> None:
    farm = farm_factory([HostSpec("127.0.0.2", image_bytes=300), HostSpec("127.0.0.3", image_bytes=300,
                                                                           latency_s=0.02)])
    dest = tmp_path / "dataset"
    manifests = split_manifest(tmp_path, farm, rows=120, parts=3)
    for p, (manifest, _urls) in enumerate(manifests):
        download(manifest, dest / f"part-{p:05d}", label="label", output_format=output_format,
                 samples_per_shard=15, max_retry_attempts=1)
    overview = consolidate(str(dest))

    index = pq.read_table(dest / INDEX_FILE).to_pylist()
    ledgers = [Ledger(Destination(str(dest / f"part-{p:05d}"))).summary() for p in range(3)]
    assert len(index) == 120 == sum(s["rows"] for s in ledgers)
    for status in ("ok", "failed", "skipped"):
        assert sum(1 for r in index if r["status"] == status) == sum(s[status] for s in ledgers)
    assert sum(1 for r in index if r["status"] == "failed") == len([i for i in range(120)
                                                                     if i % 17 == 3 or i % 29 == 5])
    assert len({r["ident"] for r in index}) == 120 and len({r["key"] for r in index}) == 120
    # Every ok entry points at its sample, whose bytes match the recorded sha256 and size.
    for r in index:
        assert r["partition"] == r["row"] % 3 and r["run_id"] is None and r["removed"] is False
        if r["status"] != "ok":
            assert r["path"] is None
            continue
        if output_format == "imagefolder":
            data = (dest / r["path"]).read_bytes()
            assert r["path"].startswith(f"part-{r['partition']:05d}/class_") and r["member"] is None
        else:
            with tarfile.open(dest / r["path"]) as tar:
                fh = tar.extractfile(r["member"])
                assert fh is not None
                data = fh.read()
        assert hashlib.sha256(data).hexdigest() == r["sha256"] and len(data) == r["bytes"]
    assert {r["http_status"] for r in index if r["status"] == "failed"} == {404, 503}

    on_disk = json.loads((dest / DATASET_FILE).read_text())
    assert on_disk == json.loads(json.dumps(overview))
    assert overview["totals"]["rows"] == 120 and overview["totals"]["removed"] == 0
    assert overview["totals"]["ok"] == sum(s["ok"] for s in ledgers)
    assert [p["rows"] for p in overview["partitions"]] == [s["rows"] for s in ledgers]
    assert overview["bytes"] == sum(s["bytes"] for s in ledgers)
    slowest = overview["hosts"]["slowest"]
    assert slowest[0]["host"] == farm.hosts[1].netloc  # the host with 20 ms latency
    throttled = overview["hosts"]["most_throttled"]
    assert throttled and all(t["refusals"] > 0 or t["failed_429_503"] > 0 for t in throttled)


def test_refusals_retried_to_success_count_as_throttling(tmp_path: Path, farm_factory: FarmFactory) -> None:
    """Every refused row got through on its retry: only the controllers' 429/503 counts show the
    throttling, and they are what most_throttled lists. (The retries trickle for 0.8 s, so the
    download's half-second snapshot catches the controller's count for its overview.)"""
    farm = farm_factory([HostSpec("127.0.0.2", image_bytes=200, retry_after_s=0.05),
                         HostSpec("127.0.0.3", image_bytes=200)])
    dest = tmp_path / "ds"
    for p in range(2):
        urls = [farm.url(0, f"/t/{p}-{i}.png?fail=429x1&slowbody=0.8") for i in range(4)] + \
               [farm.url(1, f"/t/{p}-{i}.png") for i in range(4)]
        manifest = write_manifest(tmp_path / f"part-{p:05d}.parquet", urls)
        download(manifest, dest / f"part-{p:05d}", retry_backoff_sec=0.01)
    overview = consolidate(str(dest))
    assert overview["totals"]["ok"] == 16
    [throttled] = overview["hosts"]["most_throttled"]
    assert (throttled["host"], throttled["refusals"], throttled["failed_429_503"]) == (farm.hosts[0].netloc, 8, 0)
    assert 8 <= throttled["requests"] <= 16  # as of the last snapshot: the retries may still be on their way


def test_removed_rows_are_marked_and_kept(tmp_path: Path, farm_factory: FarmFactory) -> None:
    farm = farm_factory([HostSpec("127.0.0.2", image_bytes=200)])
    urls = [farm.url(0, f"/r/{i}.png") for i in range(30)]
    manifest = write_manifest(tmp_path / "m.parquet", urls)
    dest = tmp_path / "out"
    download(manifest, dest)
    consolidate(str(dest), current=idents(urls))
    assert not any(r["removed"] for r in pq.read_table(dest / INDEX_FILE).to_pylist())

    now = [*urls[5:], farm.url(0, "/r/new.png")]  # five rows gone, one new (not fetched yet)
    overview = consolidate(str(dest), current=idents(now), run_label="second")
    index = {r["url"]: r for r in pq.read_table(dest / INDEX_FILE).to_pylist()}
    assert len(index) == 30 and overview["totals"]["removed"] == 5 and overview["totals"]["rows"] == 25
    assert [u for u, r in index.items() if r["removed"]] == urls[:5]
    assert {r["removed_in_run"] for u, r in index.items() if r["removed"]} == {"second"}
    assert all((dest / index[u]["path"]).is_file() for u in urls[:5])  # data kept
    # A later consolidate without the manifest keeps the marks and the run that made them.
    consolidate(str(dest))
    again = pq.read_table(dest / INDEX_FILE).to_pylist()
    assert sorted(r["url"] for r in again if r["removed"]) == sorted(urls[:5])
    assert {r["removed_in_run"] for r in again if r["removed"]} == {"second"}
    assert np.isin(idents(urls[:5]), [r["ident"] for r in again]).all()


def test_consolidate_command(tmp_path: Path, farm_factory: FarmFactory) -> None:
    farm = farm_factory([HostSpec("127.0.0.2", image_bytes=200)])
    manifests = split_manifest(tmp_path, farm, rows=20, parts=2)
    for p, (manifest, _urls) in enumerate(manifests):
        download(manifest, tmp_path / "ds" / f"part-{p:05d}", max_retry_attempts=0)
    done = run_flowdc("consolidate", f"{tmp_path / 'ds'}/")
    assert done.returncode == 0, done.stderr
    assert "rows stored" in done.stdout and (tmp_path / "ds" / INDEX_FILE).is_file()
    assert f"index:   {tmp_path / 'ds' / INDEX_FILE}\n" in done.stdout and "//" not in done.stdout
    assert pq.read_metadata(tmp_path / "ds" / INDEX_FILE).num_rows == 20
    nothing = run_flowdc("consolidate", str(tmp_path / "empty"))
    assert nothing.returncode == 2 and nothing.stderr.count("\n") == 1 and "no flowdc output" in nothing.stderr
    assert not (tmp_path / "empty").exists()


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("flowdc: error: ") and "Traceback" not in err, err
    return err


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, farm_factory: FarmFactory,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    farm = farm_factory([HostSpec("127.0.0.2", image_bytes=200)])
    manifest = write_manifest(tmp_path / "m.parquet", [farm.url(0, f"/j/{i}.png") for i in range(6)])
    assert main(["consolidate", str(manifest)]) == 2
    assert "is a file, not a folder" in one_error_line(capsys)

    download(manifest, tmp_path / "ds" / "part-00000")
    junk = tmp_path / "ds" / "part-00001" / "_flowdc" / "ledger" / "x.parquet"
    junk.parent.mkdir(parents=True)
    junk.write_bytes(b"junk!")
    assert main(["consolidate", str(tmp_path / "ds")]) == 2
    assert str(junk) in one_error_line(capsys)
    assert not (tmp_path / "ds" / INDEX_FILE).exists()
    assert Ledger(Destination(str(tmp_path / "ds" / "part-00000"))).summary()["ok"] == 6  # nothing lost


def test_a_junk_ledger_part_on_a_store_is_named(s3_endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    fs = s3_filesystem(s3_endpoint)
    fs.mkdir("junk-ledger")
    fs.pipe("junk-ledger/ds/part-00000/_flowdc/ledger/x.parquet", b"junk!")
    options = json.dumps(s3_options(s3_endpoint))
    assert main(["consolidate", "s3://junk-ledger/ds", "--storage_options", options]) == 2
    assert "s3://junk-ledger/ds/part-00000/_flowdc/ledger/x.parquet" in one_error_line(capsys)


def test_a_store_that_cannot_be_reached_is_one_line_like_download(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], s3_endpoint: str) -> None:
    """The line and exit code of a download whose output cannot be reached (1: a rerun may work)."""
    nobody = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    options = s3_options(nobody, connect_timeout=1, retries={"total_max_attempts": 1})
    assert main(["consolidate", "s3://bucket/x", "--storage_options", json.dumps(options)]) == 1
    assert "cannot read s3://bucket/x: EndpointConnectionError" in one_error_line(capsys)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no asking a metadata service off loopback
    no_credentials = json.dumps({"client_kwargs": {"endpoint_url": s3_endpoint}})
    assert main(["consolidate", "s3://bucket/y", "--storage_options", no_credentials]) == 1
    assert "NoCredentialsError" in one_error_line(capsys)

"""Outputs of `flowdc download`: imagefolder (safe class folders), webdataset shards with metadata,
key naming, the archive, overview.json and secrets.

Images come from fake hosts (flowdc.testing.fakehosts) on 127.0.0.x; S3 is the in-process moto server.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import hashlib
import json
import math
import os
import tarfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from flowdc.config import DownloadConfig
from flowdc.download import DownloadJob
from flowdc.testing.fakehosts import FakeHostFarm
from flowdc.write_queue import INLINE_BLOCK, INLINE_MAX_S
from flowdc.writers.naming import label_folder, url_key
from tests.integration.conftest import (
    FAST,
    by_url,
    download,
    expected_png,
    latest,
    run_flowdc,
    sha256,
    tar_samples,
    visible_files,
    write_manifest,
)

HOSTILE_LABELS = ["cat", "../../x", "/etc", "..", ".", "猫 🐱", "a/b", "", "dog", "..\\..\\win", "~root", "x" * 300]


def image_files(out: Path) -> list[Path]:
    return [p for p in visible_files(out) if "_flowdc" not in p.parts and p.name != "overview.json"]


def tar_names(shard: Path) -> list[str]:
    with tarfile.open(shard) as tar:
        return tar.getnames()


def test_imagefolder_labels_cannot_escape(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """Hostile, unicode, empty, null and over-long labels each get one class folder inside the
    output; nothing is written anywhere else, and each file's path matches its ledger record."""
    labels: list[str | None] = [*HOSTILE_LABELS, None]
    urls = [two_hosts.url(i % 2, f"/lab/{i}.png?size=500") for i in range(len(labels))]
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"url": urls, "label": pa.array(labels, pa.string())}), manifest)
    out = tmp_path / "ds" / "out"
    overview = download(manifest, out, label="label", create_tar=True)
    assert overview["totals"]["ok"] == len(labels)

    assert sorted(os.listdir(tmp_path)) == ["ds", "m.parquet"]
    assert sorted(os.listdir(tmp_path / "ds")) == ["out", "out.tar"]
    root = out.resolve()
    for path in visible_files(tmp_path):
        assert path.resolve().is_relative_to(tmp_path.resolve())
    folders = {p.name for p in out.iterdir() if p.is_dir() and p.name != "_flowdc"}
    assert folders == {label_folder(label) for label in labels}
    assert all(name not in (".", "..", "") and "/" not in name for name in folders)
    for rec in latest(out):
        file = out / rec["path"]
        assert file.resolve().parent.parent == root
        assert file.parent.name == label_folder(rec["label"]) and file.name == f"{rec['key']}.png"
        assert sha256(file.read_bytes()) == rec["sha256"]
    assert len(image_files(out)) == len(labels)


def test_imagefolder_without_labels_writes_at_the_root(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """Without --label every sample is a KEY.EXT file directly in the output folder."""
    urls = [two_hosts.url(0, f"/nolab/{i}.png?size=400") for i in range(3)]
    out = tmp_path / "out"
    download(write_manifest(tmp_path / "m.parquet", urls), out)
    assert sorted(p.name for p in image_files(out)) == ["00000001.png", "00000002.png", "00000003.png"]


def test_webdataset_shards_and_metadata(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """Shards are NNNNNN.tar with samples_per_shard samples each; every sample has its image and a
    .json (key, url, label, sha256 of the image, size, status, carried columns); they read back with
    webdataset.WebDataset; each shard has a metadata parquet; the ledger keeps the carried columns."""
    n = 23
    sizes = [600 + i if i % 5 else 70_000 + i for i in range(n)]
    urls = [two_hosts.url(i % 2, f"/wds/{i}.png?size={sizes[i]}") for i in range(n)]
    urls[7] = two_hosts.url(1, "/wds/missing.png?fail=404")
    extras: dict[str, list[Any]] = {"license": [f"CC-{i % 3}" for i in range(n)], "photo_id": list(range(100, 100 + n)),
                                    "score": [i / 4 for i in range(n)]}
    manifest = write_manifest(tmp_path / "m.parquet", urls, labels=[f"c{i % 4}" for i in range(n)],
                              extra_columns=extras)
    out = tmp_path / "out"
    overview = download(manifest, out, label="label", output_format="webdataset", samples_per_shard=5)
    assert overview["totals"] == {"rows": n, "ok": n - 1, "failed": 1, "skipped": 0}

    assert sorted(p.name for p in out.glob("*.tar")) == [f"{i:06d}.tar" for i in range(5)]
    samples = tar_samples(out)
    assert len(samples) == n - 1
    per_shard = sorted(len(tar_names(p)) // 2 for p in out.glob("*.tar"))
    assert per_shard == [2, 5, 5, 5, 5]
    records = {r["key"]: r for r in latest(out) if r["status"] == "ok"}
    assert set(samples) == set(records)
    for key, parts in samples.items():
        assert set(parts) == {"png", "json"}
        meta = json.loads(parts["json"])
        row = records[key]["row"]
        assert meta["key"] == key == f"{row + 1:08d}"
        assert meta["url"] == urls[row] and meta["label"] == f"c{row % 4}"
        assert meta["sha256"] == hashlib.sha256(parts["png"]).hexdigest() == records[key]["sha256"]
        assert meta["size"] == len(parts["png"]) == sizes[row] and meta["http_status"] == 200
        assert meta["status"] == "success"
        assert (meta["license"], meta["photo_id"], meta["score"]) == (f"CC-{row % 3}", 100 + row, row / 4)
        assert parts["png"] == expected_png(f"/wds/{row}.png", sizes[row])
        assert json.loads(records[key]["meta"]) == {"license": f"CC-{row % 3}", "photo_id": 100 + row,
                                                    "score": row / 4}

    shards = [str(p) for p in sorted(out.glob("*.tar"))]
    read_back = list(wds.WebDataset(shards, shardshuffle=False, empty_check=False))
    assert len(read_back) == n - 1 and len({s["__key__"] for s in read_back}) == n - 1
    assert all(hashlib.sha256(s["png"]).hexdigest() == json.loads(s["json"])["sha256"] for s in read_back)

    listed_failures = []
    for shard in sorted(out.glob("*.tar")):
        table = pq.read_table(shard.with_suffix(".parquet"))
        stored = table.filter(pc.equal(table["status"], "success"))
        assert set(stored.column("key").to_pylist()) == {n.split(".")[0] for n in tar_names(shard)}
        listed_failures += table.filter(pc.not_equal(table["status"], "success")).column("key").to_pylist()
        assert {"license", "photo_id", "score", "url", "sha256", "label"} <= set(table.column_names)
    assert listed_failures == [r["key"] for r in latest(out) if r["status"] == "failed"]  # in one shard's parquet


@pytest.mark.parametrize("samples_per_shard", [100, 4])
def test_typed_manifest_columns_keep_their_types_in_every_shard(tmp_path: Path, two_hosts: FakeHostFarm,
                                                                samples_per_shard: int) -> None:
    """A parquet manifest's dates, decimals, times and bytes next to a row that fails: every sample
    is stored (a shard mixing a date with the failed row's JSON text of one once failed its commit
    and lost its samples: the one-shard case), each shard's parquet has the manifest's types and
    ours whatever its rows hold, so all of them read as one table; a sample's .json carries bytes as
    their text, or base64 when they are not UTF-8."""
    n = 9
    urls = [two_hosts.url(i % 2, f"/typed/{i}.png") for i in range(n)]
    urls[-1] = two_hosts.url(0, "/typed/missing.png?fail=404")
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({
        "url": urls,
        "observed": pa.array([datetime.date(2024, 5, i + 1) for i in range(n)], pa.date32()),
        "price": pa.array([decimal.Decimal(f"{i}.25") for i in range(n)], pa.decimal128(6, 2)),
        "taken": pa.array([datetime.datetime(2024, 5, 1, 12, i) for i in range(n)], pa.timestamp("s")),
        "blob": pa.array([b"\xff\x00" if i % 2 else b"plain" for i in range(n)], pa.binary()),
        "note": pa.array([None] * (n - 1) + ["only the last"], pa.string()),
    }), manifest)
    out = tmp_path / "out"
    overview = download(manifest, out, output_format="webdataset", samples_per_shard=samples_per_shard)
    assert overview["totals"] == {"rows": n, "ok": n - 1, "failed": 1, "skipped": 0}
    assert len(tar_samples(out)) == n - 1

    shards = sorted(out.glob("*.parquet"))
    assert len(shards) == math.ceil((n - 1) / samples_per_shard)
    schemas = {pq.read_schema(p).remove_metadata() for p in shards}
    assert len(schemas) == 1
    (schema,) = schemas
    declared = pq.read_schema(manifest)  # parquet keeps times in ms at the finest: timestamp[ms]
    for column in ("observed", "price", "taken", "blob", "note"):
        assert schema.field(column).type == declared.field(column).type
    assert [str(schema.field(c).type) for c in ("error_message", "duplicate_of", "exif", "width")] == [
        "string", "string", "string", "int64"]
    table = pq.read_table(shards)  # every shard at once: the first one's schema fits the others
    rows = {r["row"]: r for r in table.to_pylist()}
    assert len(rows) == n and rows[8]["status"] == "failed_to_download"
    assert rows[8]["observed"] == datetime.date(2024, 5, 9) and rows[8]["price"] == decimal.Decimal("8.25")
    assert rows[4]["taken"] == datetime.datetime(2024, 5, 1, 12, 4) and rows[4]["blob"] == b"plain"
    metas = {json.loads(parts["json"])["row"]: json.loads(parts["json"]) for parts in tar_samples(out).values()}
    assert metas[4]["blob"] == "plain" and metas[3]["blob"] == "/wA="  # base64 of ff 00
    assert metas[4]["observed"] == "2024-05-05" and metas[4]["price"] == "4.25"


def test_a_resume_with_another_image_key_is_refused(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """One image key per dataset: a rerun whose --image_key is not the one the stored shards use
    would mix extensions (HF's builder drops the other one's images), so it is refused with one
    line and exit 2, before anything changes; the same key, or auto, goes on."""
    urls = [two_hosts.url(i % 2, f"/key/{i}.png?size={600 + i}") for i in range(8)]
    out = tmp_path / "out"
    download(write_manifest(tmp_path / "first.parquet", urls[:4]), out, output_format="webdataset",
             samples_per_shard=3)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    manifest = write_manifest(tmp_path / "all.parquet", urls)
    args = ["download", "--input", str(manifest), "--output", str(out), "--output_format", "webdataset",
            "--samples_per_shard", "3", "--quiet", "--no_create_tar"]
    refused = run_flowdc(*args, "--image_key", "jpg")
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert "--image_key jpg" in lines[0] and "png" in lines[0]
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert run_flowdc(*args, "--image_key", "png").returncode == 0
    extensions = {name.rsplit(".", 1)[1] for shard in out.glob("*.tar") for name in tar_names(shard)}
    assert extensions == {"png", "json"} and len(tar_samples(out)) == 8


def test_sequential_keys_are_row_numbers_stable_across_runs_and_retries(tmp_path: Path,
                                                                        two_hosts: FakeHostFarm) -> None:
    """Sequential keys are manifest row + 1, zero-padded to 8, whatever the dispatch order, the
    concurrency or the retries; url_based keys are the URL's hash, whatever the row."""
    urls = [two_hosts.url(i % 2, f"/seq/{i}.png?size=300") for i in range(30)]
    urls[0] = two_hosts.url(0, "/seq/first.png?fail=503x2&size=300")  # row 0 needs retries
    manifest = write_manifest(tmp_path / "m.parquet", urls)
    mappings = []
    for name, workers, fmt in (("a", 1, "imagefolder"), ("b", 50, "webdataset")):
        download(manifest, tmp_path / name, concurrent_downloads=workers, output_format=fmt, samples_per_shard=7)
        mappings.append({r["key"]: r["url"] for r in latest(tmp_path / name)})
    assert mappings[0] == mappings[1] == {f"{i + 1:08d}": u for i, u in enumerate(urls)}
    assert (tmp_path / "a" / "00000001.png").is_file()
    assert "00000001" in tar_samples(tmp_path / "b")

    download(manifest, tmp_path / "u", naming_mode="url_based")
    assert {r["key"]: r["url"] for r in latest(tmp_path / "u")} == {url_key(u): u for u in urls}


def test_url_based_keys_are_collision_safe_and_skip_duplicates(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """Same basename on other paths or hosts gets another key; a repeated URL row is skipped as
    duplicate_url, also when the repeat arrives in a later refresh of the manifest."""
    same_name = [two_hosts.url(0, "/a/img.png"), two_hosts.url(0, "/b/img.png"), two_hosts.url(1, "/a/img.png")]
    urls = [*same_name, same_name[0]]
    out = tmp_path / "out"
    download(write_manifest(tmp_path / "m.parquet", urls), out, naming_mode="url_based", output_format="webdataset",
             samples_per_shard=2)
    rows = latest(out)
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "skipped"]
    assert rows[3]["reason"] == "duplicate_url" and rows[3]["duplicate_of"] == rows[0]["key"]
    assert len({r["key"] for r in rows[:3]}) == 3 and rows[0]["duplicate_of"] is None
    assert sorted(tar_samples(out)) == sorted(r["key"] for r in rows[:3])

    refreshed = write_manifest(tmp_path / "m2.parquet", [*urls, two_hosts.url(1, "/c/new.png"), same_name[1]])
    download(refreshed, out, naming_mode="url_based", output_format="webdataset", samples_per_shard=2)
    rows = latest(out)
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "skipped", "ok", "skipped"]
    assert rows[5]["reason"] == "duplicate_url" and rows[5]["duplicate_of"] == rows[1]["key"]
    assert sorted(tar_samples(out)) == sorted(r["key"] for r in rows if r["status"] == "ok")


def test_url_based_a_repeat_never_makes_its_first_row_a_duplicate_of_itself(tmp_path: Path,
                                                                            two_hosts: FakeHostFarm) -> None:
    """url_based: a repeated URL is skipped as a duplicate of its first row. When that first row
    failed transiently (or a kill cut it off), the next run fetches it again: the repeat skipped
    before does not make it a duplicate of itself (the URL was lost for good)."""
    flaky = two_hosts.url(0, "/dup/flaky.png?fail=503x2")
    urls = [flaky, flaky, two_hosts.url(1, "/dup/fine.png")]
    manifest = write_manifest(tmp_path / "m.parquet", urls)
    out = tmp_path / "out"
    options = {"naming_mode": "url_based", "max_retry_attempts": 0, "retry_backoff_sec": 0.05}
    for _ in range(2):  # two runs, one 503 each
        download(manifest, out, **options)
        rows = latest(out)
        assert [(r["status"], r["reason"]) for r in rows] == [("failed", "http_503"), ("skipped", "duplicate_url"),
                                                              ("ok", None)]
    download(manifest, out, **options)
    rows = latest(out)
    assert [r["status"] for r in rows] == ["ok", "skipped", "ok"] and rows[1]["duplicate_of"] == rows[0]["key"]
    assert len(image_files(out)) == 2


def test_create_tar_packs_the_images_beside_the_output(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """create_tar writes a plain OUTPUT.tar next to the output (built during the run), holding every
    image (not the ledger); a resumed run with archive_format tar.gz packs the earlier run's images
    too, and its own archive of the other format goes."""
    urls = [two_hosts.url(i % 2, f"/tgz/{i}.png?size=800") for i in range(12)]
    out = tmp_path / "images"
    labels = ["p", "q", "r"] * 4
    overview = download(write_manifest(tmp_path / "m.parquet", urls[:9], labels=labels[:9]), out,
                        label="label", create_tar=True)
    assert overview["archive"] == str(tmp_path / "images.tar")
    assert archived_images(tmp_path / "images.tar", "r:", out) == 9

    again = download(write_manifest(tmp_path / "m.parquet", urls, labels=labels), out, label="label",
                     create_tar=True, archive_format="tar.gz")
    assert again["this_run"]["ok"] == 3 and again["archive"] == str(tmp_path / "images.tar.gz")
    assert archived_images(tmp_path / "images.tar.gz", "r:gz", out) == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "images.tar.gz", "m.parquet"]


def archived_images(archive: Path, mode: str, out: Path) -> int:
    """The archive's images, each checked against its file in the output (and nothing of _flowdc)."""
    with tarfile.open(archive, mode) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    images = {k: v for k, v in members.items() if k.endswith(".png")}
    assert set(images) == {f"images/{p.relative_to(out)}" for p in image_files(out)}
    assert "images/overview.json" in members and not any("_flowdc" in k or ".tmp-" in k for k in members)
    for name, data in images.items():
        assert data == (out.parent / name).read_bytes()
    return len(images)


def test_overview_figures_and_no_secrets(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """overview.json holds the config, totals, success_rate, bytes, elapsed_s, rates, errors and
    per-host figures; storage option values (secrets) appear nowhere in the output."""
    urls = [two_hosts.url(i % 2, f"/ov/{i}.png?size=1000") for i in range(10)]
    urls += [two_hosts.url(0, "/ov/gone.png?fail=404"), "ftp://127.0.0.2/x.png"]
    out = tmp_path / "out"
    secrets = {"key": "AKIA-FLOWDC-TEST-KEY", "secret": "very-secret-value-42"}
    download(write_manifest(tmp_path / "m.parquet", urls), out, storage_options=secrets,
             telemetry=str(tmp_path / "out" / "telemetry.jsonl"))
    doc = json.loads((out / "overview.json").read_text())
    assert {"config", "totals", "success_rate", "bytes", "elapsed_s", "images_per_s", "mb_per_s", "errors",
            "hosts"} <= set(doc)
    assert doc["totals"] == {"rows": 12, "ok": 10, "failed": 2, "skipped": 0}
    assert doc["success_rate"] == round(10 / 12, 6) and doc["bytes"] == 10_000
    assert doc["errors"] == {"http_404": 1, "unsupported_scheme:ftp": 1}
    assert doc["elapsed_s"] > 0 and doc["images_per_s"] > 0 and doc["mb_per_s"] >= 0
    assert 0.0 <= doc["this_run"]["client_busy_share"] <= 1.0
    assert doc["config"]["input"] == str(tmp_path / "m.parquet")
    hosts = doc["hosts"]
    assert set(hosts) == {h.netloc for h in two_hosts.hosts}
    first = hosts[two_hosts.hosts[0].netloc]
    assert (first["rows"], first["ok"], first["bytes"]) == (6, 5, 5000) and first["ttfb_median_ms"] is not None
    assert all(0 < h["done_s"] <= doc["elapsed_s"] + 1.0 for h in hosts.values())  # from the run's start
    assert doc["long_pole"] is None  # the two hosts were done together
    for path in visible_files(tmp_path):
        data = path.read_bytes()
        assert b"very-secret-value-42" not in data and b"AKIA-FLOWDC-TEST-KEY" not in data, path


def test_no_overview_when_disabled(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """--no_create_overview (create_overview false) writes no overview.json."""
    out = tmp_path / "out"
    download(write_manifest(tmp_path / "m.parquet", [two_hosts.url(0, "/nov/1.png")]), out, create_overview=False)
    assert not (out / "overview.json").exists() and by_url(out)[two_hosts.url(0, "/nov/1.png")]["status"] == "ok"


def test_webdataset_to_s3_keeps_secrets_out(tmp_path: Path, two_hosts: FakeHostFarm, s3_endpoint: str) -> None:
    """A webdataset written to S3 (moto) holds whole shards, a ledger and an overview without the keys."""
    from tests.cloud_servers import S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY, s3_filesystem

    fs = s3_filesystem(s3_endpoint)
    fs.mkdir("flowdc-out-test")
    urls = [two_hosts.url(i % 2, f"/s3/{i}.png?size=500") for i in range(7)]
    options = {"key": S3_ACCESS_KEY, "secret": S3_SECRET_KEY,
               "client_kwargs": {"endpoint_url": s3_endpoint, "region_name": S3_REGION}}
    overview = download(write_manifest(tmp_path / "m.parquet", urls), "s3://flowdc-out-test/run1",
                        output_format="webdataset", samples_per_shard=3, storage_options=options)
    assert overview["totals"]["ok"] == 7
    names = sorted(p.rsplit("/", 1)[1] for p in fs.find("flowdc-out-test/run1"))
    assert [n for n in names if n.endswith(".tar")] == ["000000.tar", "000001.tar", "000002.tar"]
    text = fs.cat("flowdc-out-test/run1/overview.json")
    assert S3_SECRET_KEY.encode() not in text and S3_ACCESS_KEY.encode() not in text
    for path in fs.find("flowdc-out-test/run1"):
        assert S3_SECRET_KEY.encode() not in fs.cat(path), path


@pytest.mark.parametrize(("options", "inline"), [({}, True), ({"output_format": "webdataset"}, True),
                                                  ({"verify": "full"}, False)],
                         ids=["imagefolder", "webdataset", "verify-full"])
def test_where_samples_are_written(tmp_path: Path, two_hosts: FakeHostFarm, options: dict[str, Any],
                                   inline: bool) -> None:
    """On a local disk, files and appended shards are written on the event loop, timed, and stay
    there while writes are fast (a block slower than INLINE_MAX_S a sample would have sent them to
    the threads); full decodes keep their writer threads."""
    urls = [two_hosts.url(i % 2, f"/where/{i}.png") for i in range(INLINE_BLOCK + 44)]
    cfg = DownloadConfig(input=str(write_manifest(tmp_path / "m.parquet", urls)), output=str(tmp_path / "out"),
                         **{**FAST, **options})
    job = DownloadJob(cfg)
    overview = asyncio.run(job.run())
    assert overview["totals"]["ok"] == len(urls)
    cost = job.write_queue.inline_cost_s
    if inline:
        assert cost is not None and cost > 0
        assert job.write_queue.inline is (cost <= INLINE_MAX_S)
    else:
        assert cost is None and not job.write_queue.inline

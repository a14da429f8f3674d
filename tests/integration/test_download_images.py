"""Images as images: the decode check (Pillow) over real JPEG, PNG, WebP and GIF bodies served by
the fake hosts, and bodies that look like images but do not decode.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flowdc import __version__
from flowdc.testing.fakehosts import FakeHostFarm
from tests.integration.conftest import StatusHost, download, latest, write_manifest

FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "gif": "GIF"}


def _manifest(tmp_path: Path, urls: list[str], labels: list[str] | None = None) -> Path:
    path = tmp_path / "m.parquet"
    cols: dict[str, list[str]] = {"url": urls}
    if labels is not None:
        cols["label"] = labels
    pq.write_table(pa.table(cols), path)
    return path


@pytest.mark.parametrize("verify", ["header", "full"])
def test_sizes_and_formats_recorded_and_undecodable_bodies_fail(tmp_path: Path, two_hosts: FakeHostFarm,
                                                                 verify: str) -> None:
    """Every format's width, height and format reach the ledger and the sample's .json; a JPEG
    signature over noise fails as not_decodable in both modes, a JPEG cut in half only under full."""
    urls = [two_hosts.url(i % 2, f"/img/{fmt}.{fmt}?fmt={fmt}&w={30 + i}&h={20 + i}") for i, fmt in enumerate(FORMATS)]
    urls += [two_hosts.url(0, "/bad/h.jpg?body=badheader"), two_hosts.url(1, "/bad/c.jpg?body=corrupt")]
    out = tmp_path / "out"
    overview = download(_manifest(tmp_path, urls), out, output_format="webdataset", verify=verify)
    recs = latest(out)
    for i, (rec, fmt) in enumerate(zip(recs, FORMATS.values(), strict=False)):
        assert (rec["status"], rec["width"], rec["height"], rec["image_format"]) == ("ok", 30 + i, 20 + i, fmt)
    assert (recs[4]["status"], recs[4]["reason"], recs[4]["retryable"]) == ("failed", "not_decodable", False)
    cut = recs[5]
    if verify == "full":
        assert (cut["status"], cut["reason"]) == ("failed", "not_decodable")
    else:
        assert (cut["status"], cut["width"], cut["image_format"]) == ("ok", 64, "JPEG")
    assert overview["errors"].get("not_decodable") == (2 if verify == "full" else 1)
    with tarfile.open(out / "000000.tar") as tar:
        members = tar.getmembers()
        metas = [json.load(tar.extractfile(m)) for m in members if m.name.endswith(".json")]
    # bytes stored: the refused bodies' sizes stay in the ledger, but not in the overview's totals
    images = sum(m.size for m in members if not m.name.endswith(".json"))
    assert recs[4]["bytes"] and overview["bytes"] == images == sum(h["bytes"] for h in overview["hosts"].values())
    by_key = {m["key"]: m for m in metas}
    assert by_key[recs[0]["key"]]["width"] == 30 and by_key[recs[0]["key"]]["image_format"] == "JPEG"
    assert recs[4]["key"] not in by_key


def test_verify_none_keeps_what_the_signature_check_passes(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    urls = [two_hosts.url(0, "/n/h.jpg?body=badheader"), two_hosts.url(1, "/n/ok.png?fmt=png")]
    out = tmp_path / "out"
    download(_manifest(tmp_path, urls), out, verify="none")
    recs = latest(out)
    assert [r["status"] for r in recs] == ["ok", "ok"]
    assert recs[1]["width"] is None


# img2dataset's documented output fields (its README, "Output format": the per-sample .json and the
# shard parquet) and its stats file's fields; written here so img2dataset need not be installed.
IMG2DATASET_SAMPLE_FIELDS = ("url", "caption", "key", "status", "error_message", "width", "height",
                             "original_width", "original_height", "exif", "sha256")
IMG2DATASET_STATS_FIELDS = ("count", "successes", "failed_to_download", "failed_to_resize", "duration",
                            "start_time", "end_time", "status_dict")
IMG2DATASET_STATUSES = {"success", "failed_to_download", "failed_to_resize"}


def test_img2dataset_fields_in_json_parquet_and_stats(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """Each sample's .json and each shard's parquet carry img2dataset's names with its meanings;
    rows that fail are rows of the parquet of the shard open when they ended; NNNNNN_stats.json counts."""
    urls = [two_hosts.url(i % 2, f"/meta/{i}.jpg?fmt=jpeg&w={40 + i}&h=30") for i in range(6)]
    urls += [two_hosts.url(0, "/meta/gone.jpg?fail=404"), two_hosts.url(1, "/meta/bad.jpg?body=badheader")]
    out = tmp_path / "out"
    download(_manifest(tmp_path, urls, [f"cap {i}" for i in range(len(urls))]), out, output_format="webdataset",
             label="label", samples_per_shard=100)
    with tarfile.open(out / "000000.tar") as tar:
        metas = [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")]
    assert len(metas) == 6
    for meta in metas:
        assert set(IMG2DATASET_SAMPLE_FIELDS) <= set(meta)
        assert meta["status"] == "success" and meta["error_message"] is None and meta["http_status"] == 200
        assert (meta["width"], meta["height"]) == (meta["original_width"], meta["original_height"])
        assert meta["width"] == 40 + int(meta["key"]) - 1 and meta["caption"] == f"cap {int(meta['key']) - 1}"
        assert meta["class_name"] == meta["caption"]  # the original FLOW-DC's name for the label
    table = pq.read_table(out / "000000.parquet")
    assert set(IMG2DATASET_SAMPLE_FIELDS) <= set(table.column_names)
    rows = {r["key"]: r for r in table.to_pylist()}
    assert len(rows) == 8 and {r["status"] for r in rows.values()} <= IMG2DATASET_STATUSES
    assert (rows["00000007"]["status"], rows["00000007"]["error_message"], rows["00000007"]["http_status"]) == \
        ("failed_to_download", "http_404", 404)
    assert (rows["00000008"]["status"], rows["00000008"]["error_message"]) == ("failed_to_resize", "not_decodable")
    stats = json.loads((out / "000000_stats.json").read_text())
    assert set(IMG2DATASET_STATS_FIELDS) <= set(stats)
    assert (stats["count"], stats["successes"], stats["failed_to_download"], stats["failed_to_resize"]) == (8, 6, 1, 1)
    assert stats["status_dict"] == {"success": 6, "http_404": 1, "not_decodable": 1}
    assert stats["end_time"] >= stats["start_time"] and stats["duration"] >= 0


def test_a_row_a_later_run_retries_is_listed_in_each_shard_it_ended_in(tmp_path: Path, two_hosts: FakeHostFarm,
                                                                       status_host: StatusHost) -> None:
    """Shard parquets and stats are what happened while each shard was open, and a committed shard
    never changes: a row that failed transiently (503) in one run and is stored by the next is a
    failed row of the first run's shard and a success of the second's. So the stats' `count`s add
    up to more than the rows, while their `successes` add up to the samples stored (docs/outputs.md)."""
    urls = [two_hosts.url(i, f"/later/{i}.png") for i in range(2)] + [status_host.url(503, 1, "later")]
    manifest = _manifest(tmp_path, urls)
    out = tmp_path / "out"
    for _ in range(2):
        download(manifest, out, output_format="webdataset", samples_per_shard=100, max_retry_attempts=0)
    listed = {shard.name: {r["row"]: r["status"] for r in pq.read_table(shard).to_pylist()}
              for shard in sorted(out.glob("*.parquet"))}
    assert listed == {"000000.parquet": {0: "success", 1: "success", 2: "failed_to_download"},
                      "000001.parquet": {2: "success"}}
    stats = [json.loads(p.read_text()) for p in sorted(out.glob("*_stats.json"))]
    assert sum(s["count"] for s in stats) == 4 and sum(s["successes"] for s in stats) == 3
    assert sorted(r["status"] for r in latest(out)) == ["ok"] * 3


def test_manifest_columns_named_like_our_fields_are_kept_under_manifest(tmp_path: Path, two_hosts: FakeHostFarm,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A manifest's own `key`, `status`, `width`, `size`, `caption` (and, with them, its `manifest`)
    keep their values under `manifest` in each sample's .json and the shard parquet, failed rows
    too; flowdc's fields keep their names and meanings; other columns stay at the top; one warning
    names the columns at the start; the ledger's meta keeps every column under its own name."""
    urls = [two_hosts.url(i % 2, f"/clash/{i}.png?fmt=png&w={30 + i}&h=20") for i in range(3)]
    urls.append(two_hosts.url(0, "/clash/gone.png?fail=404"))
    theirs: dict[str, list[Any]] = {
        "key": ["K0", "K1", "K2", "K3"], "status": ["research", "casual", "x", "y"], "width": [1000, 2000, 3000, 4000],
        "size": ["big", "small", "mid", "tiny"], "caption": ["c0", "c1", "c2", "c3"],
        "manifest": ["m0", "m1", "m2", "m3"], "note": ["n0", "n1", "n2", "n3"]}
    manifest = write_manifest(tmp_path / "m.parquet", urls, labels=["a", "b", "c", "d"], extra_columns=theirs)
    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        download(manifest, out, label="label", output_format="webdataset", samples_per_shard=100)
    assert [r.getMessage() for r in caplog.records if "kept under" in r.getMessage()] == [
        "manifest columns named like flowdc's sample fields are kept under 'manifest' in each sample's .json and "
        "shard parquet: key, status, width, size, caption, manifest"]
    with tarfile.open(out / "000000.tar") as tar:
        metas = [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")]
    rows = {r["row"]: r for r in [*metas, *pq.read_table(out / "000000.parquet").to_pylist()]}
    assert sorted(rows) == [0, 1, 2, 3] and len(metas) == 3
    for row, meta in rows.items():
        assert meta["manifest"] == {name: theirs[name][row] for name in ("key", "status", "width", "size", "caption",
                                                                          "manifest")}
        assert (meta["key"], meta["caption"], meta["note"]) == (f"{row + 1:08d}", "abcd"[row], f"n{row}")
        assert meta["status"] == ("success" if row < 3 else "failed_to_download")
        assert meta["width"] == (30 + row if row < 3 else None)
    for meta in metas:
        assert rows[meta["row"]] == meta  # the parquet row is the sample's .json
    assert {r["row"]: json.loads(r["meta"]) for r in latest(out)} == {
        row: {name: values[row] for name, values in theirs.items()} for row in range(4)}


def test_x_robots_tag_opt_outs_are_skipped_and_the_user_agent_names_us(tmp_path: Path,
                                                                      two_hosts: FakeHostFarm) -> None:
    """noai / noimageai / noindex (or a configured list) skip the row with the directive as reason;
    a directive for another crawler does not; requests carry FLOW-DC, the contact and the token."""
    robots = ["noai", "noarchive&robots=NoImageAI", "otherbot:%20noindex", "labcrawl:noindex", "noarchive"]
    urls = [two_hosts.url(i % 2, f"/r/{i}.png?robots={value}") for i, value in enumerate(robots)]
    urls.append(two_hosts.url(1, "/r/5.png"))
    out = tmp_path / "out"
    overview = download(_manifest(tmp_path, urls), out, user_agent_token="labcrawl",
                        contact_url="https://lab.example/crawl")
    got = [(r["status"], r["reason"]) for r in latest(out)]
    assert got == [("skipped", "x_robots_tag:noai"), ("skipped", "x_robots_tag:noimageai"), ("ok", None),
                   ("skipped", "x_robots_tag:noindex"), ("ok", None), ("ok", None)]
    assert overview["totals"]["skipped"] == 3
    assert sorted(p.name for p in out.glob("*.png")) == ["00000003.png", "00000005.png", "00000006.png"]
    agents = {ua for host in two_hosts.hosts for ua in host.stats["user_agents"]}
    assert agents == {f"FLOW-DC/{__version__} (+https://lab.example/crawl) labcrawl"}

    again = tmp_path / "again"
    download(_manifest(tmp_path, urls), again, disallowed_header_directives=["noindex"])
    assert [r["status"] for r in latest(again)] == ["ok", "ok", "ok", "ok", "ok", "ok"]  # no token: labcrawl is not us
    download(_manifest(tmp_path, urls), tmp_path / "none", disallowed_header_directives=[])
    assert {r["status"] for r in latest(tmp_path / "none")} == {"ok"}


def test_dedupe_sha256_stores_each_body_once_across_runs(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """Identical bodies (one path on both hosts, or with another query) are stored once; the others
    are skipped as duplicate naming the kept key, in the ledger and the shard parquet; a resumed run
    with more rows still knows what the first one stored."""
    urls = [two_hosts.url(0, "/d/a.png?x=1"), two_hosts.url(1, "/d/a.png?x=2"), two_hosts.url(0, "/d/b.png"),
            two_hosts.url(1, "/d/a.png?x=3")]
    out = tmp_path / "out"
    download(_manifest(tmp_path, urls), out, dedupe="sha256", output_format="webdataset")
    recs = latest(out)
    same = [r for r in recs if r["row"] != 2]
    kept = [r for r in same if r["status"] == "ok"]
    assert len(kept) == 1 and recs[2]["status"] == "ok"
    for dup in (r for r in same if r is not kept[0]):
        assert (dup["status"], dup["reason"], dup["duplicate_of"]) == ("skipped", "duplicate", kept[0]["key"])
    with tarfile.open(out / "000000.tar") as tar:
        assert len(tar.getmembers()) == 4  # two samples, image and .json each
    table = pq.read_table(out / "000000.parquet")
    assert sorted(k for k in table.column("duplicate_of").to_pylist() if k) == [kept[0]["key"]] * 2

    more = [*urls, two_hosts.url(0, "/d/b.png?again=1"), two_hosts.url(1, "/d/c.png")]
    download(_manifest(tmp_path, more), out, dedupe="sha256", output_format="webdataset")
    recs = latest(out)
    assert (recs[4]["status"], recs[4]["duplicate_of"]) == ("skipped", recs[2]["key"])
    assert recs[5]["status"] == "ok" and sum(r["status"] == "ok" for r in recs) == 3


def test_resize_and_reencode_in_worker_processes(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """keep_ratio to 16 as jpg over PNG, WebP and GIF sources: every stored member is a JPEG whose
    smaller side is 16, the .json keeps the original size and the served body's sha256; a JPEG
    cut in half fails as not_decodable."""
    from PIL import Image

    urls = [two_hosts.url(i % 2, f"/rs/{i}.{fmt}?fmt={fmt}&w={64 + 16 * i}&h=32") for i, fmt in
            enumerate(("png", "webp", "gif"))]
    urls.append(two_hosts.url(0, "/rs/cut.jpg?body=corrupt"))
    out = tmp_path / "out"
    download(_manifest(tmp_path, urls), out, output_format="webdataset", resize_mode="keep_ratio", image_size=16,
             encode_format="jpg", processes_count=2)
    recs = latest(out)
    assert (recs[3]["status"], recs[3]["reason"]) == ("failed", "not_decodable")
    with tarfile.open(out / "000000.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    assert sorted(n for n in members if not n.endswith(".json")) == ["00000001.jpg", "00000002.jpg", "00000003.jpg"]
    for i in range(3):
        key = f"{i + 1:08d}"
        meta = json.loads(members[f"{key}.json"])
        with Image.open(io.BytesIO(members[f"{key}.jpg"])) as img:
            assert img.format == "JPEG"
            assert img.size == (round((64 + 16 * i) / 2), 16) == (meta["width"], meta["height"])
        assert (meta["original_width"], meta["original_height"]) == (64 + 16 * i, 32)
        assert meta["sha256"] == recs[i]["sha256"] != hashlib.sha256(members[f"{key}.jpg"]).hexdigest()
        assert meta["size"] == len(members[f"{key}.jpg"])


@pytest.mark.parametrize(("mode", "only_if_bigger", "sizes"), [
    ("keep_ratio_largest", False, [(16, 8), (16, 10)]),  # the larger side becomes 16, the small one enlarged
    ("center_crop", False, [(16, 16), (16, 16)]),
    ("border", False, [(16, 16), (16, 16)]),
    ("keep_ratio", True, [(32, 16), (10, 6)]),  # never enlarged: the small one keeps its size
])
def test_each_resize_mode_on_served_images(tmp_path: Path, two_hosts: FakeHostFarm, mode: str, only_if_bigger: bool,
                                           sizes: list[tuple[int, int]]) -> None:
    """Every mode over a WebP bigger and a PNG smaller than image_size 16, as stored by an
    imagefolder run and recorded in the ledger (keep_ratio without only_if_bigger: the test above)."""
    from PIL import Image

    urls = [two_hosts.url(0, f"/m/{mode}/big.webp?fmt=webp&w=64&h=32"),
            two_hosts.url(1, f"/m/{mode}/small.png?fmt=png&w=10&h=6")]
    out = tmp_path / "out"
    download(_manifest(tmp_path, urls), out, resize_mode=mode, image_size=16, resize_only_if_bigger=only_if_bigger,
             encode_format="png", processes_count=1)
    recs = latest(out)
    for rec, size, src in zip(recs, sizes, [(64, 32), (10, 6)], strict=True):
        assert rec["status"] == "ok" and (rec["width"], rec["height"]) == size
        assert (rec["original_width"], rec["original_height"]) == src
        with Image.open(out / f"{rec['key']}.png") as img:
            assert img.format == "PNG" and img.size == size


def test_keep_stores_an_image_it_does_not_resize_as_served(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """--resize_only_if_bigger with encode_format keep: the big WebP is resized (as WebP), the small
    one is stored byte for byte as served, under its own extension."""
    urls = [two_hosts.url(0, "/k/big.webp?fmt=webp&w=64&h=32"), two_hosts.url(1, "/k/small.webp?fmt=webp&w=10&h=6")]
    out = tmp_path / "out"
    download(_manifest(tmp_path, urls), out, resize_mode="keep_ratio", image_size=16, resize_only_if_bigger=True,
             processes_count=1)
    big, small = latest(out)
    served = [urllib.request.urlopen(url, timeout=10).read() for url in urls]
    assert (big["width"], big["height"], small["width"], small["height"]) == (32, 16, 10, 6)
    assert big["bytes"] < len(served[0]) and small["path"].endswith(".webp")
    assert (out / small["path"]).read_bytes() == served[1] and small["bytes"] == len(served[1])

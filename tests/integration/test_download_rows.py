"""What a row may put into an output: label folders and the label map, bodies that are no image,
and URLs with credentials in them.

Image servers are fake hosts on 127.0.0.x (flowdc.testing.fakehosts); outputs are real folders.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from flowdc.ledger import Ledger, Record, url_hash
from flowdc.storage import Destination
from flowdc.testing.fakehosts import FakeHostFarm
from flowdc.writers.naming import MISSING_LABEL_FOLDER, label_folder
from tests.integration.conftest import (
    download,
    expected_png,
    latest,
    requested_urls,
    run_flowdc,
    sha256,
    tar_samples,
    visible_files,
    write_manifest,
)
from tests.integration.sinks_helpers import iter_bytes_of


def class_folders(out: Path) -> set[str]:
    return {p.name for p in out.iterdir() if p.is_dir() and p.name != "_flowdc"}


def label_map(out: Path) -> dict[str, object]:
    return json.loads((out / "_flowdc" / "labels.json").read_text())


# -- labels -------------------------------------------------------------------------------------
def test_distinct_labels_get_distinct_folders_and_a_label_map(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """Labels that clean to the same name (`a/b`, `a_b`, `a:b`, `a\\b`, `a?b`, `a<NUL>b`) each get a
    folder of their own; null and empty labels share the missing-label class, apart from a real
    label `unlabeled`; _flowdc/labels.json and overview.json map every folder to its label."""
    labels: list[str | None] = ["a/b", "a_b", "a:b", "a\\b", "a?b", "a\x00b", None, "", "unlabeled", "cat", "cat"]
    urls = [two_hosts.url(i % 2, f"/lbl/{i}.png?size=300") for i in range(len(labels))]
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"url": urls, "label": pa.array(labels, pa.string())}), manifest)
    out = tmp_path / "out"
    overview = download(manifest, out, label="label")
    assert overview["totals"]["ok"] == len(labels)

    distinct = ["a/b", "a_b", "a:b", "a\\b", "a?b", "a\x00b", None, "unlabeled", "cat"]
    expected = {label_folder(x): x for x in distinct}
    assert len(expected) == len(distinct)
    assert class_folders(out) == set(expected)
    assert {"a_b", "unlabeled", "cat", MISSING_LABEL_FOLDER} <= set(expected)
    for rec in latest(out):
        assert rec["path"].split("/")[0] == label_folder(rec["label"])
    doc = label_map(out)
    assert doc["folders"] == expected and doc["merged"] == {}
    assert doc["missing_label_folder"] == MISSING_LABEL_FOLDER
    shown = overview["labels"]
    assert shown["folders"] == expected and shown["classes"] == len(expected)
    assert shown["map_file"] == "_flowdc/labels.json"
    assert json.loads((out / "overview.json").read_text())["labels"]["folders"] == expected


def test_urls_and_labels_stored_as_binary(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """Some parquet writers store text as plain binary. UTF-8 bytes read as the text they are; a
    URL whose bytes are not UTF-8 fails as invalid_url, and a label's odd bytes read as U+FFFD: one
    row's problem each, where the whole run once stopped on a traceback."""
    urls = [two_hosts.url(i % 2, f"/bin/{i}.png?size=300").encode() for i in range(4)]
    urls[3] = urls[3].replace(b"/bin/", b"/bin\xff/")
    labels = [b"cat", "h\u00e9ron".encode(), b"\xffdog", b"cat"]
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"url": pa.array(urls, pa.binary()), "label": pa.array(labels, pa.binary())}), manifest)
    out = tmp_path / "out"
    overview = download(manifest, out, label="label")
    assert overview["totals"] == {"rows": 4, "ok": 3, "failed": 1, "skipped": 0}
    rows = {r["row"]: r for r in latest(out)}
    assert rows[3]["reason"] == "invalid_url" and not [u for u in requested_urls(two_hosts) if "/3.png" in u]
    assert [rows[i]["label"] for i in range(3)] == ["cat", "h\u00e9ron", "\ufffddog"]
    assert (out / label_folder("h\u00e9ron") / rows[1]["path"].split("/")[-1]).is_file()


def test_a_csv_export_with_stray_delimiters_and_a_repeated_column(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """A spreadsheet export: a header naming `url` twice, and two lines a stray comma split wrong.
    The run goes on (exit 0): those lines are skipped and shown in the summary and overview.json,
    the second `url` is carried as `url.1`; partition skips the same lines."""
    urls = [two_hosts.url(i % 2, f"/csv/{i}.png?size=300") for i in range(6)]
    lines = ["url,label,url", *(f"{u},cat,{u}" for u in urls[:3]), f"{urls[3]},big, fat cat,{urls[3]}",
             f"{urls[4]},cat", f"{urls[5]},dog,{urls[5]}"]
    manifest = tmp_path / "export.csv"
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    done = run_flowdc("download", "--input", str(manifest), "--output", str(out), "--label", "label",
                      "--output_format", "webdataset", "--no_create_tar")
    assert done.returncode == 0, done.stderr
    assert "repeats column names (url): the later ones are read as url.1" in done.stderr
    skipped = f"{manifest}: 2 line(s) skipped, the first at line 5, not split into the header's fields"
    assert f"warning: {skipped}" in done.stdout  # the summary
    overview = json.loads((out / "overview.json").read_text())
    assert overview["totals"] == {"rows": 4, "ok": 4, "failed": 0, "skipped": 0}
    assert [w for w in overview["warnings"] if w.startswith(skipped)]
    assert {json.loads(parts["json"])["url.1"] for parts in tar_samples(out).values()} == {*urls[:3], urls[5]}
    split = run_flowdc("partition", "--input", str(manifest), "--output_folder", str(tmp_path / "parts"),
                       "--groups", "2")
    assert split.returncode == 0 and skipped in split.stderr, split.stderr


def test_an_older_output_resumes_into_its_folders(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """An output written by the earlier naming (`a/b` in `a_b/`, missing labels in `unlabeled/`)
    resumes with those folders: more rows of `a/b` join `a_b/`, and new labels `a_b` and
    `unlabeled` get hashed folders of their own instead of merging into the old ones."""
    labels: list[str | None] = ["a/b", None, "a/b", "a_b", "unlabeled", ""]
    urls = [two_hosts.url(0, f"/old/{i}.png?size=300") for i in range(len(labels))]
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"url": urls, "label": pa.array(labels, pa.string())}), manifest)
    out = tmp_path / "out"
    dest = Destination(str(out))
    ledger = Ledger(dest)
    for row, folder in ((0, "a_b"), (1, "unlabeled")):  # what the earlier flowdc left
        path = f"{folder}/{row + 1:08d}.png"
        body = expected_png(f"/old/{row}.png", 300)
        dest.write_bytes(path, body)
        ledger.add(Record(row, f"{row + 1:08d}", urls[row], "ok", label=labels[row], path=path, bytes=len(body),
                          sha256=sha256(body), url_hash=url_hash(urls[row])))
    ledger.flush()

    overview = download(manifest, out, label="label")
    assert overview["totals"]["ok"] == len(labels) and overview["this_run"]["already_done"] == 2
    by_row = {r["row"]: r["path"].split("/")[0] for r in latest(out)}
    assert by_row[0] == by_row[2] == "a_b"  # the resumed class is not split
    assert by_row[1] == by_row[5] == "unlabeled"  # nor the old missing-label class
    assert by_row[3] not in ("a_b", "unlabeled", MISSING_LABEL_FOLDER)
    assert by_row[4] not in ("a_b", "unlabeled", MISSING_LABEL_FOLDER)
    assert len(set(by_row.values())) == 4
    assert label_map(out)["folders"] == {"a_b": "a/b", "unlabeled": None, by_row[3]: "a_b", by_row[4]: "unlabeled"}


# -- bodies that are not images -----------------------------------------------------------------
def test_html_served_as_an_image_is_not_an_image(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """A 200 with Content-Type image/jpeg and an HTML body fails as `not_an_image` (final, not
    retried, nothing stored); real images under any image type are stored."""
    html = two_hosts.url(0, "/nai/page.jpg?body=html&ctype=image/jpeg")
    good = two_hosts.url(1, "/nai/ok.png?size=500&ctype=image/jpeg")  # a PNG served as JPEG is still an image
    out = tmp_path / "out"
    overview = download(write_manifest(tmp_path / "m.parquet", [html, good]), out, max_retry_attempts=3)
    records = {r["url"]: r for r in latest(out)}
    bad = records[html]
    assert (bad["status"], bad["reason"], bad["retryable"], bad["attempts"]) == ("failed", "not_an_image", False, 1)
    assert bad["path"] is None
    assert records[good]["status"] == "ok"
    assert overview["errors"] == {"not_an_image": 1}
    stored = [p for p in visible_files(out) if p.suffix in (".jpg", ".png")]
    assert [p.read_bytes() for p in stored] == [expected_png("/nai/ok.png", 500)]


# -- secrets in URLs ----------------------------------------------------------------------------
SECRETS = ("hunter2pw", "TOKVALUE1", "AMZSIG2", "SIGVALUE3", "FTPPASS4", "FTPTOK5")


def secret_urls(farm: FakeHostFarm) -> list[str]:
    def with_user(url: str) -> str:
        return url.replace("http://", "http://alice:hunter2pw@", 1)

    return [
        with_user(farm.url(0, "/sec/0.png?size=400&token=TOKVALUE1")),
        farm.url(1, "/sec/1.png?X-Amz-Signature=AMZSIG2&monkey=banana&size=400"),
        farm.url(0, "/sec/2.png?sig=SIGVALUE3&fail=404"),
        "ftp://bob:FTPPASS4@127.0.0.2/x.png?token=FTPTOK5",
    ]


def test_url_secrets_never_reach_the_output_or_the_terminal(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """Userinfo and secret query parameters (whole names: `monkey` stays) are masked in the ledger,
    every sample's .json, the shard parquet, overview.json, stdout and stderr; the hosts still get
    the real URLs, and a rerun recognises every row (nothing is fetched again)."""
    urls = secret_urls(two_hosts)
    manifest = write_manifest(tmp_path / "m.parquet", urls, labels=["x"] * len(urls))
    out = tmp_path / "out"
    args = ["download", "--input", str(manifest), "--output", str(out), "--output_format", "webdataset",
            "--max_retry_attempts", "0", "--cloud_destination", "https://carol:CLOUDPW6@store.invalid/x?auth=AUTH7"]
    done = run_flowdc(*args)
    assert done.returncode == 0, done.stderr
    requested = requested_urls(two_hosts)
    assert requested[urls[1]] == 1 and requested[urls[0].replace("alice:hunter2pw@", "")] == 1  # the real URLs

    records = {r["row"]: r for r in latest(out)}
    assert [records[i]["status"] for i in range(4)] == ["ok", "ok", "failed", "failed"]
    assert records[0]["url"].startswith("http://***@127.0.0.2:") and records[0]["url"].endswith("&token=***")
    assert "X-Amz-Signature=***&monkey=banana" in records[1]["url"]
    assert records[3]["url"] == "ftp://***@127.0.0.2/x.png?token=***"
    assert all(records[i]["url_hash"] == url_hash(u) for i, u in enumerate(urls))  # of the full URL
    scanned = list(iter_bytes_of(Destination(str(out))))
    assert any(name.endswith(".tar") for name, _ in scanned)
    assert any("(decoded)" in name and "_flowdc/ledger" in name for name, _ in scanned)
    for secret in (*SECRETS, "CLOUDPW6", "AUTH7"):
        assert [name for name, data in scanned if secret.encode() in data] == [], secret
        assert secret not in done.stdout + done.stderr
    meta = json.loads(tar_samples(out)["00000002"]["json"])
    assert meta["url"] == records[1]["url"] and "X-Amz-Signature=***&monkey=banana" in meta["url"]
    shard_rows = pq.read_table(out / "000000.parquet").to_pylist()
    stored = [r["url"] for r in shard_rows if r["status"] == "success"]
    assert sorted(stored) == sorted([records[0]["url"], records[1]["url"]])
    assert {r["url"] for r in shard_rows} <= {r["url"] for r in records.values()}  # failed rows too, redacted

    again = run_flowdc(*args)
    assert again.returncode == 0, again.stderr
    assert requested_urls(two_hosts) == requested  # every row recognised by its hash: no refetch


def test_no_redact_urls_keeps_urls_whole(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """--no_redact_urls (redact_urls false) writes URLs exactly as the manifest has them."""
    urls = secret_urls(two_hosts)[:2]
    out = tmp_path / "out"
    download(write_manifest(tmp_path / "m.parquet", urls), out, redact_urls=False)
    assert sorted(r["url"] for r in latest(out)) == sorted(urls)

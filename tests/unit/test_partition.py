"""`flowdc partition`: properties of the three methods, the plan, host extraction and user errors.

The property tests run run_partition end to end on small random manifests and read the partition
files back, so they check what a downstream step would see.
"""

from __future__ import annotations

import gzip
import json
import math
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowdc import partition
from flowdc.config import ConfigError, PartitionConfig
from flowdc.partition import fair_share, host_series, pack, run_partition
from flowdc.urls import host_key

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TRICKY_URLS = [
    "http://user:pw@Host:8080/x",
    "HTTPS://EXAMPLE.COM",
    "example.com/no-scheme",
    "//Example.com:80?q=1",
    "http://[::1]:80/a",
    "http://[::1/broken",
    "http://[1.2.3.4]/not-v6",
    "http://[v1.x]/future",
    "http://a.com?x=@y",
    "http://a@b@C.com#f",
    " http://padded.com/ ",
    "http://trailing.com ",
    "http://space.com /p",
    "ht\ttp://tab.com",
    "http:/\n/newline.com/a",
    "http://exämple.com/",
    "http://\u2100.com/",
    "\u00a0http://nbsp.com/",
    "\x00http://nul.com",
    "http://x.com\x1f",
    "http://x.com/päth",
    "mailto:a@b.com",
    "",
    "http://",
    "x://y",
    "1http://z.com",
    "a.b+c-d://Host/",
    "http:x//y",
    "http://ho st/",
    "HTTP://Mixed.Case.COM:443/Path?Q=A#Frag",
]

HOSTS = ["a.com", "B.org", "c.net:8080", "u:p@d.io", "[::1]:80", "e.com", "f.com", "g.com", "h.com"]
URL = st.one_of(
    st.builds(
        lambda scheme, host, path: f"{scheme}{host}/{path}",
        st.sampled_from(["http://", "https://", "HTTP://", "//"]),
        st.one_of(st.just("big.example"), st.sampled_from(HOSTS)),  # about half the rows on one host
        st.text(alphabet="abc/?#@ é", max_size=4),
    ),
    st.sampled_from(["", "not a url", "mailto:x@y", " http://pad.com/ ", "http://[::1/x"]),
    st.none(),
)


# --------------------------------------------------------------------------- helpers


def write_manifest(folder: Path, urls: list[str | None], labels: list[Any] | None = None) -> Path:
    columns: dict[str, Any] = {"url": pl.Series(urls, dtype=pl.String), "extra": [f"x{i}" for i in range(len(urls))]}
    if labels is not None:
        columns["label"] = labels
    path = folder / "manifest.parquet"
    pl.DataFrame(columns).write_parquet(path)
    return path


def run(folder: Path, manifest: Path, **options: Any) -> tuple[dict[str, Any], list[pl.DataFrame]]:
    options.setdefault("groups", 3)
    cfg = PartitionConfig(input=str(manifest), output_folder=str(folder / "out"), **options)
    plan = run_partition(cfg, progress=False)
    on_disk = json.loads((folder / "out" / "plan.json").read_text())
    assert on_disk == plan
    return plan, [pl.read_parquet(folder / "out" / p["file"]) for p in plan["partitions"]]


def check_common(plan: dict[str, Any], parts: list[pl.DataFrame], original: pl.DataFrame) -> None:
    """Every row lands in exactly one partition, unchanged, with the right host; the plan adds up."""
    rows = sorted(r for p in parts for r in p["row"].to_list())
    assert rows == list(range(original.height))
    assert plan["total_rows"] == original.height == sum(p["rows"] for p in plan["partitions"])
    for entry, frame in zip(plan["partitions"], parts, strict=True):
        assert entry["rows"] == frame.height
        assert entry["hosts"] == frame["host"].n_unique() if frame.height else entry["hosts"] == 0
        assert frame["host"].to_list() == [host_key(u or "") for u in frame["url"].to_list()]
    merged = pl.concat(parts).sort("row").drop("row", "host") if original.height else None
    if merged is not None:
        assert merged.equals(original)


def hosts_by_partition(parts: list[pl.DataFrame]) -> dict[str, dict[int, int]]:
    spans: dict[str, dict[int, int]] = defaultdict(dict)
    for i, frame in enumerate(parts):
        for host, n in Counter(frame["host"].to_list()).items():
            spans[host][i] = n
    return spans


# --------------------------------------------------------------------------- host extraction


def test_host_series_matches_host_key_on_tricky_urls() -> None:
    got = host_series(pl.Series([*TRICKY_URLS, None])).to_list()
    assert got == [host_key(u) for u in TRICKY_URLS] + [""]


@given(st.lists(st.text(alphabet="hH:/@[]?#. \t\n\x00é1vx:-", max_size=20), max_size=40))
@SETTINGS
def test_host_series_matches_host_key_on_random_text(texts: list[str]) -> None:
    prefixed = [t if i % 2 else "http://" + t for i, t in enumerate(texts)]
    assert host_series(pl.Series(prefixed, dtype=pl.String)).to_list() == [host_key(u) for u in prefixed]


# --------------------------------------------------------------------------- packing


@given(st.lists(st.integers(1, 200), max_size=40), st.integers(1, 8))
@SETTINGS
def test_pack_splits_only_hosts_above_the_fair_share(sizes: list[int], n: int) -> None:
    sizes = sorted(sizes, reverse=True)
    cap = fair_share(sum(sizes), n)
    bins, pieces = pack(sizes, n, cap)
    loads = [0] * n
    for i, size in enumerate(sizes):
        if i in pieces:
            assert size > cap and sum(r for _, r in pieces[i]) == size
            assert all(r > 0 for _, r in pieces[i]) and len({b for b, _ in pieces[i]}) == len(pieces[i])
            for b, r in pieces[i]:
                loads[b] += r
        else:
            assert size <= cap and 0 <= bins[i] < n
            loads[bins[i]] += size
    assert sum(loads) == sum(sizes)


# --------------------------------------------------------------------------- host method


@given(st.lists(URL, max_size=60), st.integers(1, 6))
@SETTINGS
def test_host_method_keeps_hosts_whole_unless_the_plan_says_split(urls: list[str | None], groups: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        manifest = write_manifest(folder, urls)
        plan, parts = run(folder, manifest, groups=groups, method="host")
        check_common(plan, parts, pl.read_parquet(manifest))
        assert plan["n_partitions"] == groups == len(parts)
        spans = hosts_by_partition(parts)
        split = plan["split_hosts"]
        assert plan["split_hosts_complete"] and plan["split_hosts_total"] == len(split)
        for host, where in spans.items():
            if len(where) == 1:
                assert host not in split
                continue
            entry = split[host]  # a host in two partitions must be listed, with exact counts
            assert entry["rows"] == sum(where.values()) > plan["fair_share"]
            assert {p["partition"]: p["rows"] for p in entry["partitions"]} == where
            assert math.isclose(sum(p["budget_share"] for p in entry["partitions"]), 1.0, rel_tol=1e-6)
        assert set(split) <= set(spans)


def test_host_method_splits_a_dominant_host_in_manifest_order(tmp_path: Path) -> None:
    urls = [f"http://big.com/{i}" for i in range(60)] + [f"http://h{i % 15}.org/x" for i in range(40)]
    plan, parts = run(tmp_path, write_manifest(tmp_path, urls), groups=4, method="host")
    assert [p["rows"] for p in plan["partitions"]] == [25, 25, 25, 25]
    big = plan["split_hosts"]["big.com"]
    assert big["rows"] == 60 and [p["rows"] for p in big["partitions"]] == [25, 25, 10]
    assert [p["budget_share"] for p in big["partitions"]] == [25 / 60, 25 / 60, 10 / 60]
    first = parts[big["partitions"][0]["partition"]]
    assert first["row"].to_list() == list(range(25))  # the first 25 rows of big.com, in order
    assert plan["partitions"][0]["largest_host"] == "big.com"
    assert plan["partitions"][0]["largest_host_share"] == 1.0
    shares = pl.read_parquet(tmp_path / "out" / plan["host_shares_file"])
    assert shares.filter(pl.col("host") == "big.com")["rows"].sum() == 60


def test_sparse_pair_counting_gives_the_same_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    urls = [f"http://h{i % 13}.com/{i}" for i in range(300)] + [f"http://big.com/{i}" for i in range(300)]
    manifest = write_manifest(tmp_path, urls)
    dense, _ = run(tmp_path, manifest, groups=4, method="simple", seed=1)
    monkeypatch.setattr(partition, "DENSE_PAIRS", 0)  # (partition, host) pairs grouped in frames instead
    sparse, _ = run(tmp_path, manifest, groups=4, method="simple", seed=1)
    assert sparse == dense
    assert pl.read_parquet(tmp_path / "out" / dense["host_shares_file"])["rows"].sum() == 600


# --------------------------------------------------------------------------- simple method


@given(st.lists(URL, max_size=60), st.integers(1, 7), st.one_of(st.none(), st.integers(0, 3)))
@SETTINGS
def test_simple_sizes_differ_by_at_most_one(urls: list[str | None], groups: int, seed: int | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        manifest = write_manifest(folder, urls)
        plan, parts = run(folder, manifest, groups=groups, method="simple", seed=seed)
        check_common(plan, parts, pl.read_parquet(manifest))
        sizes = [p.height for p in parts]
        assert max(sizes) - min(sizes) <= 1
        if seed is None:  # contiguous runs in manifest order
            assert [r for p in parts for r in p["row"].to_list()] == list(range(len(urls)))


def test_simple_with_a_seed_is_reproducible_and_shuffled(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, [f"http://h{i}.com/" for i in range(200)])
    _, first = run(tmp_path, manifest, groups=4, method="simple", seed=7)
    _, again = run(tmp_path, manifest, groups=4, method="simple", seed=7)
    assert [p["row"].to_list() for p in first] == [p["row"].to_list() for p in again]
    assert first[0]["row"].to_list() != list(range(50))


# --------------------------------------------------------------------------- greedy method

LABEL = st.one_of(st.sampled_from(["cat", "dog", "007", " padded ", "Ünï", ""]), st.none())


@given(st.lists(st.tuples(URL, LABEL), max_size=60), st.integers(1, 5))
@SETTINGS
def test_greedy_keeps_labels_identical_and_classes_whole(
    rows: list[tuple[str | None, str | None]], groups: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        manifest = write_manifest(folder, [u for u, _ in rows], [lbl for _, lbl in rows])
        original = pl.read_parquet(manifest)
        plan, parts = run(folder, manifest, groups=groups, method="greedy", group_col="label")
        check_common(plan, parts, original)
        by_row = {r: lbl for p in parts for r, lbl in zip(p["row"].to_list(), p["label"].to_list(), strict=True)}
        assert [by_row[i] for i in range(original.height)] == original["label"].to_list()
        homes: dict[Any, set[int]] = defaultdict(set)
        for i, p in enumerate(parts):
            for lbl in p["label"].to_list():
                homes[lbl].add(i)
        assert all(len(where) == 1 for where in homes.values())


def test_greedy_balances_classes_and_keeps_label_types(tmp_path: Path) -> None:
    labels = pa.array([7] * 40 + [3] * 30 + [9] * 30 + [1] * 20, pa.int16())
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"url": [f"http://h.com/{i}" for i in range(120)], "label": labels}), path)
    plan, parts = run(tmp_path, path, groups=2, method="greedy", group_col="label")
    assert sorted(p["rows"] for p in plan["partitions"]) == [60, 60]
    assert all(p.schema["label"] == pl.Int16 for p in parts)


# --------------------------------------------------------------------------- options and files


@given(st.integers(0, 50), st.integers(1, 12))
@SETTINGS
def test_rows_per_partition_sets_the_count(n_rows: int, per: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        manifest = write_manifest(folder, [f"http://h{i % 4}.com/{i}" for i in range(n_rows)])
        plan, parts = run(folder, manifest, groups=0, rows_per_partition=per, method="simple")
        assert plan["n_partitions"] == len(parts) == max(1, math.ceil(n_rows / per))
        assert all(p.height <= per for p in parts)


def test_files_are_whole_and_stale_partitions_go(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, [f"http://h{i % 9}.com/{i}" for i in range(90)])
    run(tmp_path, manifest, groups=5)
    (tmp_path / "out" / "notes.txt").write_text("mine")
    plan, _ = run(tmp_path, manifest, groups=2)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["_plan", "notes.txt", "part-00000.parquet", "part-00001.parquet", "plan.json"]
    assert plan["n_partitions"] == 2


def test_existing_row_column_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    pl.DataFrame({"url": [f"http://h{i}.com/" for i in range(10)], "row": list(range(100, 110))}).write_parquet(path)
    plan, parts = run(tmp_path, path, groups=2, method="simple")
    assert sorted(r for p in parts for r in p["row"].to_list()) == list(range(100, 110))
    assert plan["added_columns"] == ["host"]


def test_csv_in_csv_out_keeps_text(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("url,label\nhttp://A.com/1,007\nhttp://b.com/2,1e3\nhttp://a.com/3,007\n")
    plan, _ = run_csv(tmp_path, path)
    text = (tmp_path / "out" / plan["partitions"][0]["file"]).read_text()
    assert "007" in text and plan["total_rows"] == 3
    back = pl.concat([pl.read_csv(tmp_path / "out" / p["file"], infer_schema=False) for p in plan["partitions"]]).sort(
        "row"
    )
    assert back["label"].to_list() == ["007", "1e3", "007"]
    assert back["host"].to_list() == ["a.com", "b.com", "a.com"]


def run_csv(folder: Path, path: Path) -> tuple[dict[str, Any], None]:
    cfg = PartitionConfig(input=str(path), output_folder=str(folder / "out"), groups=2, format="csv")
    return run_partition(cfg, progress=False), None


def test_empty_manifest_gives_empty_partitions(tmp_path: Path) -> None:
    plan, parts = run(tmp_path, write_manifest(tmp_path, []), groups=3)
    assert plan["total_rows"] == 0 and [p.height for p in parts] == [0, 0, 0]
    assert {"url", "extra", "row", "host"} <= set(parts[0].columns)


def test_progress_goes_to_stderr_unless_quiet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = write_manifest(tmp_path, [f"http://h{i}.com/" for i in range(20)])
    run_partition(PartitionConfig(input=str(manifest), output_folder=str(tmp_path / "a"), groups=2))
    assert "partition" in capsys.readouterr().err
    run_partition(PartitionConfig(input=str(manifest), output_folder=str(tmp_path / "b"), groups=2, quiet=True))
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


# --------------------------------------------------------------------------- user errors


def test_missing_url_column_names_the_columns(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, ["http://a.com/"])
    with pytest.raises(ConfigError, match=r"photo_url.*url, extra"):
        run(tmp_path, manifest, url_col="photo_url")


def test_missing_input_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        run(tmp_path, tmp_path / "nope.parquet")


def test_unreadable_input_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"this is not parquet")
    with pytest.raises(ConfigError):
        run(tmp_path, bad)


def test_greedy_needs_an_existing_group_column(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, ["http://a.com/"])
    with pytest.raises(ConfigError, match=r"species.*url, extra"):
        run(tmp_path, manifest, method="greedy", group_col="species")
    with pytest.raises(ConfigError, match="group_col"):
        run(tmp_path, manifest, method="greedy")


def test_output_folder_at_or_under_a_file_is_refused(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, ["http://a.com/"])
    (tmp_path / "file").write_text("mine")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        run_partition(PartitionConfig(input=str(manifest), output_folder=str(tmp_path / "file"), groups=2))
    with pytest.raises(ConfigError, match="file is a file, not a folder"):
        run_partition(PartitionConfig(input=str(manifest), output_folder=str(tmp_path / "file" / "out"), groups=2))


def test_input_inside_the_output_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    manifest = write_manifest(tmp_path / "out", ["http://a.com/"])
    with pytest.raises(ConfigError, match="inside output_folder"):
        run(tmp_path, manifest)


@pytest.mark.parametrize(("name", "columns", "message"), [
    ("strrow.parquet", {"url": ["http://a/1", "http://b/2"], "row": ["x", "y"]}, "'row' is reserved for row numbers"),
    ("strrow.csv", {"url": ["http://a/1", "http://b/2"], "row": ["1", "y"]}, "'row' is reserved for row numbers"),
    ("inturl.parquet", {"url": [1, 2]}, "URL column 'url' holds int64, not text"),
])
def test_columns_the_download_would_refuse_exit_2_before_anything_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, columns: dict[str, list[Any]],
        message: str) -> None:
    from flowdc.cli import main

    path = tmp_path / name
    frame = pl.DataFrame(columns)
    frame.write_csv(path) if name.endswith(".csv") else frame.write_parquet(path)
    assert main(["partition", "--input", str(path), "--groups", "2", "--output_folder", str(tmp_path / "out"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("flowdc: error: ") and message in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_row_column_of_digits_is_written_as_int64(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    pl.DataFrame({"url": ["http://a/1", "http://b/2"], "row": ["7", "9"]}).write_parquet(path)
    _, parts = run(tmp_path, path, groups=2, method="simple")
    assert all(p["row"].dtype == pl.Int64 for p in parts)
    assert sorted(r for p in parts for r in p["row"].to_list()) == [7, 9]


def test_help_names_every_input_format(capsys: pytest.CaptureFixture[str]) -> None:
    from flowdc.cli import main

    with pytest.raises(SystemExit):
        main(["partition", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ("Manifest to split: parquet, csv/tsv/txt or xml (text also .gz, .bz2 or .zst compressed), "
            "or excel (.xlsx/.xls)") in text


def test_xml_input_is_read_through_the_manifest_reader(tmp_path: Path) -> None:
    path = tmp_path / "m.xml"
    rows = "".join(f'<row url="http://h{i % 3}.com/{i}" label="c{i % 2}"/>' for i in range(9))
    path.write_text(f"<rows>{rows}</rows>")
    plan, parts = run(tmp_path, path, groups=2, method="greedy", group_col="label")
    assert plan["total_rows"] == 9 and sorted(p.height for p in parts) == [4, 5]


def test_compressed_tab_separated_input_is_read_through_the_manifest_reader(tmp_path: Path) -> None:
    """A gzip-compressed, tab-separated .txt (GBIF style) partitions like any manifest."""
    path = tmp_path / "multimedia.txt.gz"
    lines = ["gbifID\tidentifier\tlicense", *(f"{i}\thttp://h{i % 3}.com/{i}.jpg\tCC0" for i in range(9))]
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    plan, parts = run(tmp_path, path, groups=3, url_col="identifier")
    assert plan["total_rows"] == 9 and sorted(p.height for p in parts) == [3, 3, 3]
    rows = pl.concat(parts).sort("row")
    assert rows["gbifID"].to_list() == [str(i) for i in range(9)] and rows["row"].to_list() == list(range(9))


@pytest.mark.parametrize(
    "options",
    [{"groups": 0}, {"groups": -2}, {"groups": 2, "rows_per_partition": 5}, {"method": "fastest"}, {"format": "xls"}],
)
def test_bad_options_are_config_errors(tmp_path: Path, options: dict[str, Any]) -> None:
    manifest = write_manifest(tmp_path, ["http://a.com/"])
    with pytest.raises(ConfigError):
        run(tmp_path, manifest, **options)
    assert not (tmp_path / "out").exists()

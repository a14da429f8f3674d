"""`flowdc download` on a changed manifest is a refresh: rows are matched by identity (the URL
with secrets masked, or the key_col id), not by position. Only new rows are fetched, they get new
keys, and no stored file is renamed or rewritten."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow.parquet as pq

from flowdc.consolidate import INDEX_FILE, consolidate
from flowdc.identity import idents
from flowdc.testing.fakehosts import FakeHostFarm, HostSpec
from tests.integration.conftest import download, latest, requested_urls, snapshot_tree, write_manifest

FarmFactory = Callable[[Sequence[HostSpec]], FakeHostFarm]


def test_a_changed_manifest_fetches_only_new_rows(tmp_path: Path, farm_factory: FarmFactory) -> None:
    farm = farm_factory([HostSpec("127.0.0.2", image_bytes=200), HostSpec("127.0.0.3", image_bytes=200)])
    first = [farm.url(i % 2, f"/d/{i}.png") for i in range(40)]
    out = tmp_path / "out"
    download(write_manifest(tmp_path / "a.parquet", first, labels=["x"] * 40), out, label="label")
    stored = snapshot_tree(out / "x")
    keys_before = {r["url"]: r["key"] for r in latest(out)}
    assert keys_before[first[7]] == "00000008"  # the seed's layout: row + 1
    asked_before = requested_urls(farm)

    rng = random.Random(1)
    added = [farm.url(i % 2, f"/d/new-{i}.png") for i in range(8)]
    second = [u for i, u in enumerate(first) if i not in (3, 4)] + added
    rng.shuffle(second)
    overview = download(write_manifest(tmp_path / "b.parquet", second, labels=["x"] * 46), out, label="label")
    asked = requested_urls(farm)
    assert {u for u in asked if asked[u] > asked_before.get(u, 0)} == set(added)
    assert overview["this_run"]["ok"] == 8 and overview["this_run"]["already_done"] == 38
    records = {r["url"]: r for r in latest(out)}
    assert {u: records[u]["key"] for u in first} == keys_before  # old rows keep their keys
    assert len({r["key"] for r in records.values()}) == 48  # new rows, new keys
    after = snapshot_tree(out / "x")
    assert {k: v for k, v in after.items() if k in stored} == stored and len(after) == 48
    # The index marks the two rows the manifest lost; their files stay.
    consolidate(str(out), current=idents(second))
    index = {r["url"]: r for r in pq.read_table(out / INDEX_FILE).to_pylist()}
    assert {u for u, r in index.items() if r["removed"]} == {first[3], first[4]}
    assert all((out / index[u]["path"]).is_file() for u in (first[3], first[4]))


def test_key_col_is_the_identity(tmp_path: Path, farm_factory: FarmFactory) -> None:
    """With key_col, rows are the same rows even when every URL changed (new host, new token)."""
    farm = farm_factory([HostSpec("127.0.0.2", image_bytes=200), HostSpec("127.0.0.3", image_bytes=200)])
    ids = [f"id-{i}" for i in range(12)]
    out = tmp_path / "out"
    urls = [farm.url(0, f"/k/{i}.png?token=a") for i in range(12)]
    download(write_manifest(tmp_path / "a.parquet", urls, extra_columns={"id": ids}), out, key_col="id")
    before = requested_urls(farm)
    moved = [farm.url(1, f"/k2/{i}.png?token=b") for i in range(12)]
    overview = download(write_manifest(tmp_path / "b.parquet", [*moved[::-1], farm.url(1, "/k2/n.png")],
                                       extra_columns={"id": [*ids[::-1], "id-new"]}), out, key_col="id")
    asked = requested_urls(farm)
    assert {u for u in asked if asked[u] > before.get(u, 0)} == {farm.url(1, "/k2/n.png")}
    assert overview["this_run"]["ok"] == 1 and overview["totals"]["rows"] == 13

"""A refresh: the collect-dataset flow run again on a manifest with rows added (20%), removed (5%)
and moved. Only the new URLs and the earlier transient failures are requested; the index holds
both runs' samples and marks the removed rows, whose data stays."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from flowdc.consolidate import INDEX_FILE, consolidate
from flowdc.testing.fakehosts import FakeHostFarm, HostSpec
from tests.integration.conftest import requested_urls, snapshot_tree, tar_samples, write_manifest

FarmFactory = Callable[[Sequence[HostSpec]], FakeHostFarm]
OPTIONS = {"timeout": 5.0, "retry_backoff_sec": 0.05, "max_retry_attempts": 1, "samples_per_shard": 20}


@pytest.mark.usefixtures("prefect_harness")
def test_refresh_fetches_only_new_rows_and_transient_failures(tmp_path: Path, farm_factory: FarmFactory) -> None:
    from flows.collect_dataset import collect_dataset

    farm = farm_factory([HostSpec("127.0.0.2", image_bytes=250), HostSpec("127.0.0.3", image_bytes=250)])

    def url(i: int) -> str:
        # Every 10th row fails twice with a 503: transient, still failed after this run's one retry.
        return farm.url(i % 2, f"/r/{i}.png" + ("?fail=503x2" if i % 10 == 3 else ""))

    first = [url(i) for i in range(100)]
    out = tmp_path / "dataset"
    run = lambda urls, name: collect_dataset(  # noqa: E731
        str(write_manifest(tmp_path / name, urls, labels=[u[-7:-4] for u in urls])), str(out),
        label_col="label", partitions=2, workers=2, output_format="webdataset", download_options=OPTIONS,
        return_state=True)
    state = run(first, "first.parquet")
    assert state.is_completed(), state.message
    transient = {u for u in first if "fail=503" in u}
    index = {r["url"]: r for r in pq.read_table(out / INDEX_FILE).to_pylist()}
    assert {u for u, r in index.items() if r["status"] == "failed"} == transient
    before = requested_urls(farm)
    (first_run,) = out.glob("run-*")
    first_files = snapshot_tree(first_run)

    rng = random.Random(5)
    removed = set(rng.sample([u for u in first if u not in transient], 5))
    added = [url(i) for i in range(1000, 1020)]  # 20% new, two of them transient failures too
    second = [u for u in first if u not in removed] + added
    rng.shuffle(second)  # every row moves
    state = run(second, "second.parquet")
    assert state.is_completed(), state.message
    result = state.result()["run"]
    assert (result["rows_new"], result["rows_retry"], result["rows_removed"]) == (20, 10, 5)

    after = requested_urls(farm)
    asked = {u for u in after if after[u] > before.get(u, 0)}
    assert asked == set(added) | transient, (asked - set(added) - transient, set(added) - asked)

    index = {r["url"]: r for r in pq.read_table(out / INDEX_FILE).to_pylist()}
    assert set(index) == set(first) | set(added)
    assert {u for u, r in index.items() if r["removed"]} == removed
    assert all(index[u]["status"] == "ok" for u in removed)  # still stored, only marked
    new_transient = {u for u in added if "fail=503" in u}
    assert {u for u, r in index.items() if r["status"] != "ok"} == new_transient
    runs = sorted({r["run_id"] for r in index.values()})
    assert len(runs) == 2
    assert {index[u]["run_id"] for u in added} == {runs[1]} and {index[u]["run_id"] for u in transient} == {runs[1]}
    assert {index[u]["run_id"] for u in removed} == {runs[0]} and first_run.name == f"run-{runs[0]}"
    assert snapshot_tree(first_run) == first_files  # the first run's files untouched, none renamed
    assert len({r["key"] for r in index.values()}) == len(index)  # new rows, new keys
    # Every stored sample is where the index says, in either run's shards.
    for run_id in runs:
        for part in sorted((out / f"run-{run_id}").glob("part-*")):
            members = tar_samples(part)
            for r in index.values():
                if r["status"] == "ok" and r["path"].startswith(f"run-{run_id}/{part.name}/"):
                    assert r["member"].split(".")[0] in members


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_stopped_before_its_consolidate_is_taken_up_by_the_next(tmp_path: Path,
                                                                        farm_factory: FarmFactory) -> None:
    """A run cancelled, crashed or killed midway leaves its plan and the ledgers of what it stored,
    but no index. The next run counts that run from its ledgers: it fetches only the rows the
    stopped run did not record, under the row numbers (keys) that run gave them; nothing is stored
    twice."""
    from flowdc.api import download
    from flowdc.config import DownloadConfig
    from flowdc.refresh import plan_run
    from flows.collect_dataset import collect_dataset

    farm = farm_factory([HostSpec("127.0.0.2", image_bytes=250), HostSpec("127.0.0.3", image_bytes=250)])
    urls = [farm.url(i % 2, f"/stopped/{i}.png") for i in range(60)]
    manifest = write_manifest(tmp_path / "m.parquet", urls, labels=["a", "b", "c"] * 20)
    out = tmp_path / "dataset"
    # What the stopped run left: its plan, and one partition that stored the plan's first 25 rows.
    plan = plan_run(str(manifest), str(out), str(tmp_path / "work"))
    planned = pq.read_table(plan.manifest)
    stored = planned.slice(0, 25)
    pq.write_table(stored, tmp_path / "stored.parquet")
    download(DownloadConfig(input=str(tmp_path / "stored.parquet"), output=f"{plan.run_dir}/part-00000", url="url",
                            label="label", create_tar=False, quiet=True, **OPTIONS))
    before = requested_urls(farm)
    assert set(before) == set(stored.column("url").to_pylist())
    assert consolidate(str(out))["totals"]["not_recorded"] == 35  # planned by the run, in no ledger

    state = collect_dataset(str(manifest), str(out), label_col="label", partitions=2, workers=2,
                            download_options=OPTIONS, return_state=True)
    assert state.is_completed(), state.message
    run = state.result()["run"]
    assert (run["rows_new"], run["rows_retry"], run["rows_done"]) == (0, 35, 25)
    after = requested_urls(farm)
    asked = {u for u in after if after[u] > before.get(u, 0)}
    assert asked == set(urls) - set(before)  # the stored rows are not fetched again

    index = pq.read_table(out / INDEX_FILE).to_pylist()
    assert sorted(r["url"] for r in index) == sorted(urls) and all(r["status"] == "ok" for r in index)
    planned_row = dict(zip(planned.column("url").to_pylist(), planned.column("row").to_pylist(), strict=True))
    assert all(r["row"] == planned_row[r["url"]] for r in index)  # every row under the number first planned
    images = [p for p in out.rglob("*.png")]
    assert len(images) == 60, len(images)
    assert json.loads((out / "dataset.json").read_text())["totals"]["not_recorded"] == 0

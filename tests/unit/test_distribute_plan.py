"""What a distribute run derives from a partition plan: the partitions, each one's host budget,
and the download config each task gets; plus the CLI's dry run and its one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flowdc.config import DistributeConfig, DownloadConfig, PartitionConfig, build_config
from flowdc.distribute import task_config
from flowdc.engines.plan import load_partitions
from flowdc.errors import ConfigError
from flowdc.partition import run_partition
from flowdc.storage import Destination
from flowdc.testing.fakehosts import write_manifest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def plan_dir(tmp_path: Path) -> Path:
    """Host a: 60 rows, b: 30, c: 10, into 2 partitions: a is split (fair share 50)."""
    urls = [f"http://a.example/{i}.png" for i in range(60)] + [f"http://b.example/{i}.png" for i in range(30)]
    urls += [f"http://c.example/{i}.png" for i in range(10)]
    manifest = write_manifest(tmp_path / "m.parquet", urls, labels=["x"] * len(urls))
    run_partition(PartitionConfig(input=str(manifest), output_folder=str(tmp_path / "parts"), groups=2, quiet=True),
                  progress=False)
    return tmp_path / "parts"


def test_a_split_host_gets_its_budget_share_in_each_partition(plan_dir: Path) -> None:
    parts = load_partitions(str(plan_dir))
    assert [p.name for p in parts] == ["part-00000", "part-00001"]
    assert sum(p.rows or 0 for p in parts) == 100
    shares = [p.host_budget.get("a.example", 0.0) for p in parts]
    assert sum(shares) == pytest.approx(1.0) and all(0 < s < 1 for s in shares)
    assert all(set(p.host_budget) == {"a.example"} for p in parts)  # whole hosts have no budget entry
    assert load_partitions(str(plan_dir / "plan.json"))[1].host_budget == parts[1].host_budget


def test_the_plan_json_split_hosts_serve_when_the_host_table_is_gone(plan_dir: Path) -> None:
    full = [p.host_budget for p in load_partitions(str(plan_dir))]
    for f in (plan_dir / "_plan").iterdir():
        f.unlink()
    assert [p.host_budget for p in load_partitions(str(plan_dir))] == full


def test_a_folder_without_a_plan_numbers_partitions_by_name(tmp_path: Path) -> None:
    """Any manifest the reader reads is a partition (compressed text too); other files are not."""
    for name in ("part-00003.parquet", "part-00005.csv.gz", "part-00007.tsv"):
        write_manifest(tmp_path / name, ["http://a.example/1.png"])
    (tmp_path / "_plan").mkdir()
    (tmp_path / "notes.md").write_text("not a partition")
    parts = load_partitions(str(tmp_path))
    assert [(p.number, p.rows, p.host_budget) for p in parts] == [(3, None, {}), (5, None, {}), (7, None, {})]


@pytest.mark.parametrize("make", ["missing", "empty", "bad_plan", "plan_lists_missing_file"])
def test_unusable_partition_inputs_are_config_errors(tmp_path: Path, make: str) -> None:
    target = tmp_path / "parts"
    target.mkdir()
    if make == "missing":
        target = tmp_path / "nope"
    elif make == "bad_plan":
        (target / "plan.json").write_text("{not json")
    elif make == "plan_lists_missing_file":
        (target / "plan.json").write_text(json.dumps({"partitions": [{"partition": 0, "file": "x.parquet",
                                                                      "rows": 3}]}))
    with pytest.raises(ConfigError):
        load_partitions(str(target))


def test_a_manifest_given_for_partitions_is_named_as_such(tmp_path: Path) -> None:
    manifest = tmp_path / "m800.parquet"
    manifest.write_bytes(b"PAR1")
    with pytest.raises(ConfigError, match=r"m800\.parquet is a file, not partitions: split it first"):
        load_partitions(str(manifest))


def test_each_task_gets_every_download_option_and_its_own_output(plan_dir: Path, tmp_path: Path) -> None:
    cfg = build_config(DistributeConfig, None, {
        "parquets_directory": str(plan_dir), "output_directory": str(tmp_path / "out"), "url_col": "url",
        "label_col": "label", "output_format": "webdataset", "samples_per_shard": 7, "theta_50": 1.7,
        "host_budget": {"a.example": 0.5}, "cloud_tool": "rclone", "cloud_destination": "remote:bucket/ds"})
    part = load_partitions(cfg.input)[1]
    doc = task_config(cfg, Destination(cfg.output), part, "part-00001.parquet", "http://127.0.0.1:1", "r1")
    task = build_config(DownloadConfig, None, doc)  # a valid download config as it stands
    # Staged (cloud_tool): the output is a folder of the task's sandbox; shards ship to its own remote folder.
    assert task.input == "part-00001.parquet" and task.output == "part-00001"
    assert (task.output_format, task.samples_per_shard, task.theta_50, task.label) == ("webdataset", 7, 1.7, "label")
    assert task.quiet and (task.run_id, task.partition_id) == ("r1", "part-00001")
    assert task.shard_prefix == "part-00001-"  # shard names unique across the dataset
    assert task.cloud_destination == "remote:bucket/ds/part-00001"
    # The run-wide budget and the partition's share multiply.
    assert task.host_budget == {"a.example": pytest.approx(0.5 * part.host_budget["a.example"])}
    assert not set(doc) - {f for f in DownloadConfig.__dataclass_fields__}
    # Without cloud_tool the task writes DEST/part-NNNNN itself.
    direct = build_config(DistributeConfig, None, {"input": str(plan_dir), "output": str(tmp_path / "out"),
                                                   "shard_prefix": "laion-"})
    doc = task_config(direct, Destination(direct.output), part, "part-00001.parquet", None, "r1")
    assert doc["output"] == str(tmp_path / "out" / "part-00001") and doc["shard_prefix"] == "laion-part-00001-"


def test_distribute_options_have_the_seed_names_and_checks() -> None:
    cfg = build_config(DistributeConfig, None, {"input": "p", "output": "o", "port_number": 0, "task_cores": 2,
                                                "timeout_minutes": 5})
    assert (cfg.port_number, cfg.task_cores, cfg.timeout_minutes, cfg.engine) == (0, 2, 5.0, "local")
    for bad in ({"engine": "slurm"}, {"task_memory_mb": -1}, {"port_number": 70000}, {"host_budget": {"h": 1.5}}):
        with pytest.raises(ConfigError):
            build_config(DistributeConfig, None, {"input": "p", "output": "o", **bad})
    # The seed's cloud config has no output_directory: the message names the seed's key too.
    with pytest.raises(ConfigError, match=r'"output_directory" in the config.*with cloud_tool, where their ledgers'):
        build_config(DistributeConfig, None, {"parquets_directory": "p", "cloud_tool": "gocmd",
                                              "cloud_destination": "AIIRA_Dataset"})


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flowdc", "distribute", *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO)


def test_dry_run_prints_one_task_per_partition(plan_dir: Path, tmp_path: Path) -> None:
    res = run_cli("--input", str(plan_dir), "--output", str(tmp_path / "out"), "--dry_run", "--task_cores", "2")
    assert res.returncode == 0, res.stderr
    tasks = [json.loads(line) for line in res.stdout.splitlines()]
    assert [t["task"] for t in tasks] == ["part-00000", "part-00001"]
    assert tasks[0]["command"][1:] == ["-m", "flowdc.engines.task", "task.json"] and tasks[0]["cores"] == 2
    assert "a.example" in tasks[0]["host_budget"]
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    staged = run_cli("--input", str(plan_dir), "--output", str(tmp_path / "out"), "--dry_run", "--cloud_tool",
                     "rclone", "--cloud_destination", "remote:ds")
    task = json.loads(staged.stdout.splitlines()[1])
    assert (task["output"], task["ships_to"]) == ("part-00001", "remote:ds/part-00001")
    assert task["state_returns_to"] == str(tmp_path / "out" / "_flowdc" / "partitions" / "part-00001.tar")


@pytest.mark.parametrize("args, words", [
    (["--url_col", "photo"], "URL column 'photo'"),
    (["--label_col", "species"], "label column 'species'"),
    (["--engine", "workqueue", "--port_number", "-3"], "port_number must be >= 0"),
])
def test_bad_options_are_one_line_and_exit_2(plan_dir: Path, tmp_path: Path, args: list[str], words: str) -> None:
    res = run_cli("--input", str(plan_dir), "--output", str(tmp_path / "out"), *args)
    assert res.returncode == 2
    assert words in res.stderr and len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


def test_a_partition_of_the_recorded_size_and_time_is_not_hashed_again(plan_dir: Path, tmp_path: Path) -> None:
    """The plan is recorded with each file's size and modification time. A partition whose size
    and time are those recorded is taken as recorded, unread (as rsync takes a file): changed in
    place with both kept, it passes. One whose time changed is hashed again; the same content is
    still this plan (and the new time is recorded), other content is another plan's."""
    from flowdc.engines.dest import PLAN_RECORD, claim_plan
    from flowdc.errors import UserError

    dest = Destination(str(tmp_path / "out"))
    parts = load_partitions(str(plan_dir))
    claim_plan(dest, parts)
    recorded = dest.read_json(PLAN_RECORD)["partitions"]
    first = Path(parts[0].path)
    assert recorded["part-00000"]["size"] == first.stat().st_size

    original, st = first.read_bytes(), first.stat()
    first.write_bytes(original[:-4] + b"XXXX")  # the footer's magic broken: another file, same size
    os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns))
    claim_plan(dest, parts)  # trusted by size and time: not read

    os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(UserError, match="part-00000 is from another manifest"):
        claim_plan(dest, parts)

    first.write_bytes(original)  # the same content again, under a new time
    claim_plan(dest, parts)
    again = dest.read_json(PLAN_RECORD)["partitions"]["part-00000"]
    assert again["sha256"] == recorded["part-00000"]["sha256"]
    assert again["mtime_ns"] == first.stat().st_mtime_ns != recorded["part-00000"]["mtime_ns"]


def test_a_plan_recorded_without_sizes_and_times_is_checked_by_content_and_completed(plan_dir: Path,
                                                                                    tmp_path: Path) -> None:
    """A record from before sizes and times were kept: every partition is hashed and compared,
    and the record gets them, so the next start reads nothing."""
    from flowdc.engines.dest import PLAN_RECORD, claim_plan

    dest = Destination(str(tmp_path / "out"))
    parts = load_partitions(str(plan_dir))
    claim_plan(dest, parts)
    old = {name: {k: v for k, v in entry.items() if k in ("file", "rows", "sha256")}
           for name, entry in dest.read_json(PLAN_RECORD)["partitions"].items()}
    dest.write_bytes(PLAN_RECORD, json.dumps({"tool": "flowdc", "partitions": old}).encode())
    claim_plan(dest, parts)
    assert all("mtime_ns" in entry for entry in dest.read_json(PLAN_RECORD)["partitions"].values())

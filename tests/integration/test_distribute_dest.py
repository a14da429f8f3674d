"""What `flowdc distribute` keeps at DEST's top: the plan its partitions come from, and --force.

A DEST filled from one plan is resumed by the same plan and refused (one line, exit 2, nothing
touched) to another, also when it was written before plans were recorded; --force clears it once
and the other plan's dataset then adds up. Real subprocesses, fake hosts on loopback.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from flowdc.config import PartitionConfig
from flowdc.consolidate import consolidate
from flowdc.engines.dest import PLAN_RECORD
from flowdc.partition import run_partition
from flowdc.testing.fakehosts import FakeHostFarm, HostSpec
from tests.integration.conftest import requested_urls, run_flowdc, write_manifest
from tests.integration.test_distribute import stored_rows

ROWS = 40
FAST_TASKS = ["--workers", "2", "--disable_paarc", "--C_init", "4", "--timeout", "5", "--quiet"]


def test_a_dest_takes_only_its_own_plan_unless_forced(
        tmp_path: Path, farm_factory: Callable[[list[HostSpec]], FakeHostFarm]) -> None:
    farm = farm_factory([HostSpec(f"127.0.0.{i}", latency_s=0.01) for i in (2, 3)])
    manifest = write_manifest(tmp_path / "m.parquet", [farm.url(i % 2, f"/img/{i:03d}.png") for i in range(ROWS)])
    plan_a, plan_b, out = tmp_path / "plan_a", tmp_path / "plan_b", tmp_path / "out"
    run_partition(PartitionConfig(input=str(manifest), output_folder=str(plan_a), groups=3, quiet=True),
                  progress=False)
    run_partition(PartitionConfig(input=str(manifest), output_folder=str(plan_b), groups=2, method="simple",
                                  seed=1, quiet=True), progress=False)

    def distribute(plan: Path, *extra: str) -> tuple[int, str]:
        done = run_flowdc("distribute", "--input", str(plan), "--output", str(out), *FAST_TASKS, *extra)
        return done.returncode, done.stderr

    assert distribute(plan_a)[0] == 0
    assert distribute(plan_a)[0] == 0  # the same plan resumes: nothing is fetched again
    assert set(requested_urls(farm).values()) == {1}
    stored = stored_rows(out)
    assert len(stored) == ROWS

    code, err = distribute(plan_b)
    assert code == 2 and "Traceback" not in err, err
    (line,) = err.strip().splitlines()
    assert "another plan" in line and "part-00002 is not in this plan" in line and "--force" in line
    assert stored_rows(out) == stored and set(requested_urls(farm).values()) == {1}  # nothing touched

    (out / PLAN_RECORD).unlink()  # as a DEST from before plans were recorded: its folders tell
    code, err = distribute(plan_b)
    assert code == 2 and "part-00002 is not in this plan" in err, err

    assert distribute(plan_b, "--force")[0] == 0
    assert sorted(p.name for p in out.glob("part-*")) == ["part-00000", "part-00001"]
    assert set(requested_urls(farm).values()) == {2}  # the forced run fetched every row once more
    overview = consolidate(str(out))
    assert overview["totals"]["rows"] == ROWS and overview["totals"]["ok"] == ROWS
    assert json.loads((out / PLAN_RECORD).read_text())["partitions"].keys() == {"part-00000", "part-00001"}

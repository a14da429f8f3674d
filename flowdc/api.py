"""The one library call engines and flows make: download one partition, get a typed result back.

`download_partition` runs a whole download on an event loop of its own in the calling thread and
leaves nothing process-wide behind (no signal handlers, no GC settings, no progress bar), so
several can run at once in one process, one per thread. The CLI's `flowdc download` is the same
download wrapped in the process lifecycle (see download.run_download).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flowdc.config import DownloadConfig
from flowdc.download import DownloadJob
from flowdc.ledger import LEDGER_DIR
from flowdc.overview import OVERVIEW_FILE
from flowdc.telemetry import Telemetry


@dataclass(frozen=True)
class RunResult:
    """What one download did. ok/failed/skipped/retries/bytes count this run; `totals` is what the
    output holds now (earlier runs included): rows, ok, failed, skipped."""

    ok: int
    failed: int
    skipped: int
    retries: int
    bytes: int
    elapsed_s: float
    interrupted: bool
    ledger_url: str
    overview_url: str | None  # None with create_overview off
    hosts: dict[str, dict[str, Any]]  # host -> rows, ok, bytes, ttfb_median_ms, controller (last snapshot)
    overview: dict[str, Any] = field(repr=False)  # the whole overview.json dict
    run_id: str = ""
    partition_id: str | None = None
    already_done: int = 0  # rows an earlier run had finished: not fetched again
    totals: dict[str, int] = field(default_factory=dict)


def download_partition(cfg: DownloadConfig, *, host_budget: Mapping[str, float] | None = None,
                       telemetry: Telemetry | None = None, run_id: str | None = None,
                       partition_id: str | None = None) -> RunResult:
    """Download cfg's manifest into cfg's output and return what happened.

    host_budget: {host netloc: share in (0, 1]} (plan.json's budget_share): that host gets the share
    of C_init and C_max (never under C_min). Without it, cfg.host_budget (if the config has one).
    telemetry: where host and run snapshots go; without it, cfg.telemetry's file (if any).
    Call it from a thread with no running event loop; in async code use download_partition_async.
    """
    return asyncio.run(download_partition_async(cfg, host_budget=host_budget, telemetry=telemetry,
                                                run_id=run_id, partition_id=partition_id))


async def download_partition_async(cfg: DownloadConfig, *, host_budget: Mapping[str, float] | None = None,
                                   telemetry: Telemetry | None = None, run_id: str | None = None,
                                   partition_id: str | None = None) -> RunResult:
    cfg.check()  # build_config checks too; a config built in code must not skip it
    job = DownloadJob(cfg, telemetry, host_budget=host_budget, run_id=run_id, partition_id=partition_id)
    overview = await job.run()
    return result_of(job, overview)


def result_of(job: DownloadJob, overview: dict[str, Any]) -> RunResult:
    run = overview["this_run"]
    return RunResult(
        ok=run["ok"], failed=run["failed"], skipped=run["skipped"], retries=run["retries"], bytes=run["bytes"],
        elapsed_s=overview["elapsed_s"], interrupted=bool(overview["interrupted"]),
        ledger_url=job.dest.url(LEDGER_DIR),
        overview_url=job.dest.url(OVERVIEW_FILE) if job.cfg.create_overview else None,
        hosts=overview["hosts"], overview=overview, run_id=job.run_id, partition_id=job.partition_id,
        already_done=run["already_done"], totals=dict(overview["totals"]),
    )

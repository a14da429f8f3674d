"""FLOW-DC's Python API: typed calls for what the CLI does (download, size, partition, report).

- `download(cfg)` / `await download_async(cfg)`: a download with an optional progress bar (tqdm.auto,
  so a widget in Jupyter) -> RunResult.
- `download_partition(cfg, host_budget=...)`: the one call engines and flows make; draws nothing.
- `size(cfg)` / `await size_async(cfg)` -> SizeResult; `partition(cfg)` -> PartitionResult;
  `report(telemetry_path)` -> ReportResult; `read_telemetry(path)` -> the host lines as a table.

Every sync call works inside a running event loop (a notebook's): it runs on a fresh loop in a helper
thread while the caller waits (flowdc.loops.run_sync). In async code, await the *_async variant.
A download leaves nothing process-wide behind (no signal handlers, no GC settings), so several can
run at once in one process, one per thread. The CLI's `flowdc download` is the same download wrapped
in the process lifecycle (see download.run_download), which keeps returning the overview dict.
Bad options raise flowdc.errors.ConfigError (a FlowdcError) with a one-line message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowdc.config import DownloadConfig, PartitionConfig, SizeConfig
from flowdc.download import DownloadJob, showing_progress
from flowdc.ledger import LEDGER_DIR
from flowdc.loops import run_sync
from flowdc.overview import OVERVIEW_FILE
from flowdc.progress import ProgressBar
from flowdc.telemetry import Telemetry

if TYPE_CHECKING:
    import polars as pl


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
    hosts: dict[str, dict[str, Any]]  # host -> rows, ok, bytes, ttfb_median_ms, done_s, controller (last snapshot)
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
    Inside a running event loop it runs in a helper thread; in async code await download_partition_async.
    """
    return run_sync(lambda: download_partition_async(cfg, host_budget=host_budget, telemetry=telemetry,
                                                     run_id=run_id, partition_id=partition_id),
                    "flowdc.api.download_partition_async")


async def download_partition_async(cfg: DownloadConfig, *, host_budget: Mapping[str, float] | None = None,
                                   telemetry: Telemetry | None = None, run_id: str | None = None,
                                   partition_id: str | None = None) -> RunResult:
    """download_partition for async code: the same download on the caller's running loop."""
    return await download_async(cfg, progress=False, host_budget=host_budget, telemetry=telemetry,
                                run_id=run_id, partition_id=partition_id)


def download(cfg: DownloadConfig, *, progress: bool = True, host_budget: Mapping[str, float] | None = None,
             telemetry: Telemetry | None = None, run_id: str | None = None,
             partition_id: str | None = None) -> RunResult:
    """Download cfg's manifest into cfg's output, with a progress bar unless progress=False or cfg.quiet.

    The bar is tqdm.auto's: a widget in Jupyter (with ipywidgets), text elsewhere. A rerun into the same
    output resumes: rows the ledger holds as ok are not fetched again (RunResult.already_done).
    Other arguments as download_partition. Safe to call inside a running event loop (helper thread).
    """
    return run_sync(lambda: download_async(cfg, progress=progress, host_budget=host_budget, telemetry=telemetry,
                                           run_id=run_id, partition_id=partition_id),
                    "flowdc.api.download_async")


async def download_async(cfg: DownloadConfig, *, progress: bool = True,
                         host_budget: Mapping[str, float] | None = None, telemetry: Telemetry | None = None,
                         run_id: str | None = None, partition_id: str | None = None) -> RunResult:
    """download() for async code: runs on the caller's loop (`await flowdc.api.download_async(cfg)`)."""
    cfg.check()  # build_config checks too; a config built in code must not skip it
    job = DownloadJob(cfg, telemetry, host_budget=host_budget, run_id=run_id, partition_id=partition_id)
    bar = ProgressBar(notebook=True) if progress and not cfg.quiet else None
    async with showing_progress(job, bar):
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


# -- size ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SizeResult:
    """What `flowdc size` found: the estimate, how it was made, and the per-host rows.

    Byte figures are None when nothing resolved. With a sample, ci95_low/ci95_high bound the estimate.
    """

    rows_total: int
    rows_asked: int
    sampled: bool
    resolved: int
    unresolved: int
    unresolved_reasons: dict[str, int]
    estimate_total_bytes: float | None
    ci95_low: float | None
    ci95_high: float | None
    mean_object_bytes: int | None
    median_object_bytes: int | None
    estimated_download_seconds: float | None
    hosts: list[dict[str, Any]]  # host, rows_asked, resolved, bytes (the busiest hosts first)
    report_path: str
    summary_text: str = field(repr=False)
    report: dict[str, Any] = field(repr=False)  # the whole JSON report as written


def size(cfg: SizeConfig) -> SizeResult:
    """Estimate how many bytes cfg's manifest(s) will download (HEAD / Range requests, as polite as a
    download), write the JSON report (cfg.report, default size_report.json beside the input) and return it.

    Safe to call inside a running event loop (helper thread); in async code await size_async.
    """
    return run_sync(lambda: size_async(cfg), "flowdc.api.size_async")


async def size_async(cfg: SizeConfig) -> SizeResult:
    """size() for async code, on the caller's loop."""
    from flowdc.size import size_async as size_report

    cfg.check()
    return size_result_of(await size_report(cfg))


def size_result_of(r: dict[str, Any]) -> SizeResult:
    return SizeResult(
        rows_total=r["rows_total"], rows_asked=r["rows_asked"], sampled=bool(r["sampled"]), resolved=r["resolved"],
        unresolved=r["unresolved"], unresolved_reasons=dict(r["unresolved_reasons"]),
        estimate_total_bytes=_number(r.get("estimate_total_bytes")), ci95_low=_number(r.get("ci95_low")),
        ci95_high=_number(r.get("ci95_high")), mean_object_bytes=r.get("mean_object_bytes"),
        median_object_bytes=r.get("median_object_bytes"),
        estimated_download_seconds=r.get("estimated_download_seconds"), hosts=list(r["hosts"]),
        report_path=str(r["report_path"]), summary_text=r["summary_text"], report=r,
    )


def _number(value: Any) -> float | None:
    return None if value is None or value != value else float(value)  # NaN (nothing resolved) -> None


# -- partition -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PartitionResult:
    """The plan `flowdc partition` wrote: one file per partition under `folder`, and plan.json."""

    folder: str
    method: str
    total_rows: int
    n_partitions: int
    files: list[str]  # full paths, part-00000.parquet ...
    partitions: list[dict[str, Any]]  # partition, file, rows, hosts, largest_host, largest_host_share
    split_hosts_total: int  # hosts spread over several partitions (their budget is shared)
    plan: dict[str, Any] = field(repr=False)  # plan.json as written


def partition(cfg: PartitionConfig, *, progress: bool = False) -> PartitionResult:
    """Split cfg.input into partitions under cfg.output_folder (by host, equal sizes, or balanced by a
    column) and write plan.json; return the plan. No event loop is involved, so it runs anywhere."""
    from flowdc.partition import run_partition

    cfg.check()
    plan = run_partition(cfg, progress=progress)
    folder = Path(cfg.output_folder)
    return PartitionResult(
        folder=str(folder), method=plan["method"], total_rows=plan["total_rows"], n_partitions=plan["n_partitions"],
        files=[str(folder / p["file"]) for p in plan["partitions"]], partitions=list(plan["partitions"]),
        split_hosts_total=plan["split_hosts_total"], plan=plan,
    )


# -- telemetry and report ------------------------------------------------------------------------
@dataclass(frozen=True)
class ReportResult:
    """Where `flowdc report` drew the telemetry (a .png or .html page)."""

    path: str
    telemetry_path: str


def report(telemetry_path: str | Path, out: str | None = None) -> ReportResult:
    """Draw a telemetry JSONL file (DownloadConfig.telemetry) as per-host panels: limit and in-flight
    requests, latency, outcomes, PAARC states. out: a .png or .html path (default beside the log)."""
    from flowdc.report import render_report

    return ReportResult(path=str(render_report(telemetry_path, out)), telemetry_path=str(telemetry_path))


def read_telemetry(path: str | Path) -> pl.DataFrame:
    """The host lines of a telemetry JSONL file as a polars DataFrame (t, host, state, limit, inflight, ...),
    sorted by time; run lines (kind "run"), if the file has them, are left out. For your own plots.
    Read as `report` reads it (a folder of parts too); a missing or foreign file is a ConfigError."""
    import polars as pl

    from flowdc.telemetry_read import ReadStats, TelemetrySource, records

    rows = list(records(TelemetrySource(path), ReadStats(), allow_empty=True))
    if not rows:  # a run shorter than one snapshot interval
        return pl.DataFrame(schema={"t": pl.Float64, "host": pl.String, "limit": pl.Float64})
    return pl.from_dicts(rows, infer_schema_length=None).sort("t", maintain_order=True)

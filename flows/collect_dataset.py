"""The `collect-dataset` Prefect flow: plan the run, partition, size (optional), distribute, consolidate.

Each task wraps one library call (flowdc does the work; this module only orchestrates, logs and
publishes artifacts). A dataset at `output` is collected in runs, each under `output/run-<id>/`:
the first run fetches the whole manifest, later runs (a refresh) only the rows the dataset does not
hold yet and the earlier transient failures (flowdc.refresh).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from flowdc.config import DownloadConfig, PartitionConfig, SizeConfig
from flowdc.consolidate import DATASET_FILE, INDEX_FILE, consolidate
from flowdc.errors import UserError
from flowdc.overview import OVERVIEW_FILE
from flowdc.refresh import RunPlan, plan_run
from flowdc.storage import Destination

FLOW_NAME = "collect-dataset"
DEMO_DOWNLOAD_OPTIONS = {"concurrent_downloads": 256, "timeout": 10, "retry_backoff_sec": 0.5,
                         "samples_per_shard": 500}
ENGINES = ("local", "workqueue", "taskvine")
# Options the flow sets itself for every partition; download_options may set any other DownloadConfig key.
FLOW_SET = frozenset({"input", "output", "url", "label", "output_format", "naming_mode", "storage_options",
                      "input_storage_options", "quiet", "telemetry"})


@dataclasses.dataclass
class Stage:
    """Progress of the run, as the Prefect UI shows it (one progress artifact per flow run)."""

    artifact: Any = None

    def start(self) -> None:
        self.artifact = create_progress_artifact(0.0, description="collect-dataset: planning")

    def at(self, percent: float) -> None:
        if self.artifact is not None:
            update_progress_artifact(self.artifact, min(100.0, max(0.0, percent)))


def _worth_retrying(task: Any, task_run: Any, state: Any) -> bool:
    """A task that failed on the user's input (a missing column, a bad option) fails the same way again."""
    try:
        state.result()
    except UserError:
        return False
    except Exception:  # any other failure may pass: retried
        pass
    return True


# -- tasks: each wraps one library call ---------------------------------------------------------
@task(name="plan-run", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE, retry_condition_fn=_worth_retrying)
def plan_task(manifest: str, output: str, work_dir: str, url_col: str, key_col: str | None, input_format: str,
              storage_options: dict[str, Any], input_storage_options: dict[str, Any],
              label_col: str | None = None) -> RunPlan:
    log = get_run_logger()
    plan = plan_run(manifest, output, work_dir, url_col=url_col, key_col=key_col, input_format=input_format,
                    storage_options=storage_options, input_storage_options=input_storage_options,
                    label_col=label_col)
    log.info("run %s: %d rows in the manifest; %d new, %d to retry, %d already in the dataset, %d removed",
             plan.run_id, plan.rows_total, plan.rows_new, plan.rows_retry, plan.rows_done, plan.rows_removed)
    return plan


@task(name="partition", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE, retry_condition_fn=_worth_retrying)
def partition_task(run_manifest: str, folder: str, url_col: str, partitions: int, method: str,
                   label_col: str | None) -> dict[str, Any]:
    from flowdc.partition import run_partition

    cfg = PartitionConfig(input=run_manifest, url_col=url_col, groups=partitions, output_folder=folder,
                          method=method, group_col=label_col if method == "greedy" else None, quiet=True)
    plan = run_partition(cfg, progress=False)
    get_run_logger().info("partitioned %d rows into %d partitions (%s)", plan["total_rows"],
                          len(plan["partitions"]), method)
    return plan


@task(name="size", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE, retry_condition_fn=_worth_retrying)
def size_task(folder: str, url_col: str, sample: int) -> dict[str, Any]:
    from flowdc.size import run_size

    cfg = SizeConfig(directory=folder, url_column=url_col, sample=sample, quiet=True,
                     report=os.path.join(folder, "size_report.json"))
    cfg.check()
    report = run_size(cfg)
    get_run_logger().info("size estimate: %s", report.get("summary_text", "").replace("\n", " "))
    return report


@task(name="distribute", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE, retry_condition_fn=_worth_retrying)
def distribute_task(folder: str, run_dir: str, engine: str, workers: int, port_number: int,
                    options: dict[str, Any], partitions: int, stage: Stage) -> dict[str, Any]:
    """Every partition downloaded into run_dir/part-NNNNN/; a task retry resumes from the ledgers."""
    log = get_run_logger()
    log.info("distributing %d partitions on the %s engine into %s", partitions, engine, run_dir)
    with _watch(run_dir, options.get("storage_options") or {}, partitions, stage):
        summary = _run_partitions(folder, run_dir, engine, workers, port_number, options)
    failed = [p for p in summary.get("partitions", []) if p.get("state") == "failed"]
    if failed:
        raise RuntimeError(f"{len(failed)} partitions failed: {', '.join(str(p.get('name')) for p in failed)}")
    log.info("all %d partitions done", partitions)
    return summary


@task(name="consolidate", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE, retry_condition_fn=_worth_retrying)
def consolidate_task(output: str, storage_options: dict[str, Any], plan: RunPlan) -> dict[str, Any]:
    overview = consolidate(output, storage_options, current=plan.current, run_label=plan.run_id)
    t = overview["totals"]
    get_run_logger().info("dataset: %d/%d rows stored (%.1f%%), %d failed, %d skipped, %d removed, %.1f MB",
                          t["ok"], t["rows"], 100 * overview["success_rate"], t["failed"], t["skipped"],
                          t["removed"], overview["bytes"] / 1e6)
    publish_artifacts(output, storage_options, plan, overview)
    return overview


# -- the flow -----------------------------------------------------------------------------------
@flow(name=FLOW_NAME, description="Collect an image dataset from a URL manifest: plan the run against what the "
      "dataset holds, partition, size (optional), distribute, consolidate into one index.")
def collect_dataset(
    manifest: str = "",
    output: str = "flowdc-demo/dataset",
    url_col: str = "url",
    label_col: str | None = None,
    key_col: str | None = None,
    input_format: str = "auto",
    output_format: str = "imagefolder",
    naming_mode: str = "sequential",
    partitions: int = 2,
    partition_method: str = "host",
    engine: str = "local",
    workers: int = 2,
    port_number: int = 9123,
    estimate_size: bool = False,
    size_sample: int = 0,
    download_options: dict[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
    input_storage_options: dict[str, Any] | None = None,
    sample_hosts: bool | None = None,
    sample_rows: int = 2000,
) -> dict[str, Any]:
    """`manifest` and `output` are paths or fsspec URLs; `download_options` holds any other
    `flowdc download` option (concurrent_downloads, timeout, max_retry_attempts, samples_per_shard, ...).
    With no manifest (or `sample_hosts=true`), the demo: the bundled sample hosts on loopback for this
    run and `sample_rows` rows from them, keyed by their `id`, labelled by their `label`."""
    log = get_run_logger()
    if sample_hosts is None:
        sample_hosts = not manifest
    if sample_hosts == bool(manifest):
        raise UserError("give a manifest, or sample_hosts=true with no manifest (the demo)")
    if sample_hosts:  # the sample manifest's own columns; its URLs change port from run to run
        key_col, label_col = key_col or "id", label_col or "label"
        download_options = {**DEMO_DOWNLOAD_OPTIONS, **(download_options or {})}
    options = _download_options(output, url_col, label_col, output_format, naming_mode, download_options or {},
                                storage_options or {})
    if engine not in ENGINES:
        raise UserError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    stage = Stage()
    stage.start()
    with _work_dir(output) as work, _sample_hosts(sample_hosts, sample_rows, work) as sample_manifest:
        manifest = manifest or sample_manifest
        plan = plan_task(manifest, output, os.path.join(work, "manifest"), url_col, key_col, input_format,
                         storage_options or {}, input_storage_options or {}, label_col)
        stage.at(10)
        if plan.rows_to_fetch:
            folder = os.path.join(work, "partitions")
            n = max(1, min(partitions, plan.rows_to_fetch))
            partition_task(plan.manifest, folder, url_col, n, partition_method, label_col)
            stage.at(15)
            if estimate_size:
                size_task(folder, url_col, size_sample)
            stage.at(20)
            distribute_task(folder, plan.run_dir, engine, workers, port_number, options, n, stage)
        else:
            log.info("nothing to fetch: the dataset holds every row of the manifest")
        stage.at(90)
        overview = consolidate_task(output, storage_options or {}, plan)
        _keep_run_record(work, output, storage_options or {}, plan)
    stage.at(100)
    return {"run": plan.summary(), "dataset": overview}


def demo_parameters(output: str, sample_rows: int = 2000, manifest: str = "") -> dict[str, Any]:
    """A deployment's default parameters: where the dataset goes, and the manifest (none: the demo's
    sample hosts). Nothing else, so that a run given its own manifest takes the flow's defaults."""
    return {"manifest": manifest, "output": os.path.abspath(output) if "://" not in output else output,
            "sample_rows": sample_rows}


# -- helpers --------------------------------------------------------------------------------------
def _download_options(output: str, url_col: str, label_col: str | None, output_format: str, naming_mode: str,
                      extra: dict[str, Any], storage_options: dict[str, Any]) -> dict[str, Any]:
    """The per-partition download config (input/output filled in per partition), checked up front."""
    fields = {f.name for f in dataclasses.fields(DownloadConfig)}
    unknown = sorted(set(extra) - fields)
    if unknown:
        raise UserError(f"unknown download option(s): {', '.join(unknown)}")
    clash = sorted(set(extra) & FLOW_SET)
    if clash:
        raise UserError(f"set {', '.join(clash)} as flow parameters, not in download_options")
    options = {"create_tar": False, **extra, "url": url_col, "label": label_col, "output_format": output_format,
               "naming_mode": naming_mode, "storage_options": storage_options, "quiet": True}
    DownloadConfig(input="-", output=output, **options).check()  # a bad option fails the run before any work
    return options


@contextmanager
def _work_dir(output: str) -> Iterator[str]:
    """Local scratch space for the run manifest and partitions."""
    work = tempfile.mkdtemp(prefix="flowdc-flow-")
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def _sample_hosts(enabled: bool, rows: int, work: str) -> Iterator[str]:
    """The bundled sample hosts on loopback (free ports) and a manifest for them, for this run only."""
    if not enabled:
        yield ""
        return
    from flowdc.demo import demo_hosts, write_demo_manifest
    from flowdc.testing.fakehosts import run_farm_in_thread

    if rows < 1:
        raise UserError(f"sample_rows must be >= 1, got {rows}")
    specs = demo_hosts(port=0)
    with run_farm_in_thread(specs) as farm:
        log = get_run_logger()
        for host, spec in zip(farm.hosts, specs, strict=True):
            log.info("sample host %s: %s", host.base_url, spec.name)
        yield str(write_demo_manifest(os.path.join(work, "sample-manifest.parquet"), farm, rows))


def _keep_run_record(work: str, output: str, storage_options: dict[str, Any], plan: RunPlan) -> None:
    """Keep the run's plan (what was fetched and why) beside its outputs: run-<id>/_flowdc/run.json."""
    dest = Destination(output, storage_options)
    record: dict[str, Any] = {"run": plan.summary()}
    plan_file = os.path.join(work, "partitions", "plan.json")
    if os.path.isfile(plan_file):
        with open(plan_file, encoding="utf-8") as fh:
            record["partition_plan"] = json.load(fh)
    dest.write_bytes(f"run-{plan.run_id}/_flowdc/run.json", json.dumps(record, indent=2).encode())


def _run_partitions(folder: str, run_dir: str, engine: str, workers: int, port_number: int,
                    options: dict[str, Any]) -> dict[str, Any]:
    """flowdc distribute: one download task per partition on the engine, into run_dir/part-NNNNN/."""
    from flowdc.config import DistributeConfig, build_config
    from flowdc.distribute import run_distribute

    cfg = build_config(DistributeConfig, None, {**options, "input": folder, "output": run_dir, "engine": engine,
                                                 "workers": workers, "port_number": port_number})
    return run_distribute(cfg)


@contextmanager
def _watch(run_dir: str, storage_options: dict[str, Any], partitions: int, stage: Stage) -> Iterator[None]:
    """Move the run's progress (20% -> 90%) as partitions finish (their overview.json appears)."""
    stop = threading.Event()
    dest = Destination(run_dir, storage_options)

    def loop() -> None:
        seen = -1
        while not stop.wait(2.0):
            try:
                done = sum(1 for name in dest.list() if name.startswith("part-")
                           and dest.exists(f"{name}/{OVERVIEW_FILE}"))
            except Exception:  # progress is a nicety: a listing that fails now is tried again
                continue
            if done != seen:
                seen = done
                stage.at(20 + 70 * done / max(1, partitions))

    thread = threading.Thread(target=loop, name="flowdc-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def publish_artifacts(output: str, storage_options: dict[str, Any], plan: RunPlan, overview: dict[str, Any]) -> None:
    """What a person reviews in the Prefect UI: tables per partition and host, a summary, links."""
    dest = Destination(output, storage_options)
    this_run = [p for p in overview["partitions"] if p["run_id"] == plan.run_id]
    create_table_artifact(
        key="dataset-partitions", table=[_table_row(p) for p in this_run] or [{"partition": "none fetched"}],
        description=f"Partitions of run {plan.run_id}: rows, outcomes, bytes, time")
    hosts = overview["hosts"]
    create_table_artifact(key="slowest-hosts", table=hosts["slowest"] or [{"host": "none"}],
                          description="Slowest hosts by median time to first byte (ms)")
    create_table_artifact(key="most-throttled-hosts", table=hosts["most_throttled"] or [{"host": "none"}],
                          description="Hosts that refused the most (429/503) and rows that failed with 429/503")
    t = overview["totals"]
    links = {"dataset index": dest.url(INDEX_FILE), "dataset overview": dest.url(DATASET_FILE),
             "this run's outputs": plan.run_dir}
    lines = [
        f"# Dataset {dest.display}",
        "",
        f"**{t['ok']} / {t['rows']} rows stored ({overview['success_rate']:.1%})**, "
        f"{t['failed']} failed, {t['skipped']} skipped, {t['removed']} removed from the manifest (kept), "
        f"{overview['bytes'] / 1e6:.1f} MB.",
        "",
        f"This run ({plan.run_id}): {plan.rows_total} manifest rows, {plan.rows_new} new, {plan.rows_retry} "
        f"retried, {plan.rows_done} already stored, {plan.rows_removed} removed.",
        "",
        "| output | where |",
        "|---|---|",
        *(f"| {name} | `{url}` |" for name, url in links.items()),
    ]
    if overview["errors"]:
        top = list(overview["errors"].items())[:8]
        lines += ["", "Not stored, by reason: " + ", ".join(f"{r} x{n}" for r, n in top)]
    create_markdown_artifact(key="dataset-summary", markdown="\n".join(lines),
                             description="Success rate, bytes and where the outputs are")
    for name, url in links.items():
        link = url if "://" in url else "file://" + url
        create_link_artifact(key="-".join(name.replace("'", "").split()), link=link, link_text=name,
                             description=f"{name} of {dest.display}")


def _table_row(p: dict[str, Any]) -> dict[str, Any]:
    keep = ("partition", "rows", "ok", "failed", "skipped", "bytes", "success_rate", "elapsed_s", "images_per_s")
    return {k: p.get(k) for k in keep}

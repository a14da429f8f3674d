"""`flowdc distribute`: one download task per partition, on an engine, until every partition is done.

The decisions live here, once for every engine: a task that ran and exited 0 is done (also when
no row of it succeeded: the partition is complete and its ledger says why); a run lost with its
worker is resubmitted and resumes from the partition's ledger; a task that exited non-zero is
retried task_retries times, except for a configuration error, which no rerun can fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from flowdc.config import DistributeConfig, DownloadConfig, public_dict
from flowdc.engines import make_engine
from flowdc.engines.base import Engine, TaskOutcome, TaskSpec
from flowdc.engines.collector import Collector
from flowdc.engines.dest import PARTITIONS_DIR, SUMMARY_FILE, TELEMETRY_FILE, claim_plan, clear_dest
from flowdc.engines.live import LiveView
from flowdc.engines.plan import Partition, load_partitions
from flowdc.engines.state import STATE_FILE, unpack_state
from flowdc.engines.task import EXIT_WALL_TIME
from flowdc.errors import EXIT_USAGE
from flowdc.leases import process_gone
from flowdc.storage import Destination

MAX_LOST_RUNS = 20  # runs of one partition lost with their worker before it counts as failed
WAIT_S = 1.0
TOKEN_ENV = "FLOWDC_TELEMETRY_TOKEN"
STAGING_PREFIX = "flowdc-distribute-"  # then the manager's pid: a later run removes a dead manager's
DOWNLOAD_FIELDS = tuple(f.name for f in dataclasses.fields(DownloadConfig))


@dataclass
class PartitionRun:
    part: Partition
    spec: TaskSpec
    state: str = "waiting"  # waiting (submitted) | done | failed
    failures: int = 0  # runs that ended with a non-zero exit
    lost: int = 0  # runs lost with their worker (or killed, or over the wall-time limit)
    history: list[dict[str, Any]] = field(default_factory=list)
    state_stamp: int = 0  # mtime of the state file last unpacked (staged partitions)
    totals: dict[str, Any] | None = None  # its overview's row totals, read once it is settled


def task_config(cfg: DistributeConfig, dest: Destination, part: Partition, input_name: str,
                push_url: str | None, run_id: str) -> dict[str, Any]:
    """The partition's download config: every download option of `cfg`, its own input and output.

    Every task of one distribute run has its run_id, and its partition_id: a resubmitted task takes
    over its lost predecessor's lease on an object store at once (each partition has its own), and
    its telemetry replaces its predecessor's in the views, which key by (run, partition).
    """
    doc = {name: getattr(cfg, name) for name in DOWNLOAD_FIELDS}
    # Staged (cloud_tool): the task downloads into its sandbox and ships; its state comes back to DEST.
    # --force cleared DEST once, before the first task: a resubmitted task resumes like any other.
    doc.update(input=input_name, output=part.name if staged(cfg) else dest.url(part.name), quiet=True,
               force=False, telemetry=None, run_id=run_id, partition_id=part.name,
               shard_prefix=f"{cfg.shard_prefix}{part.name}-")  # shard names unique across the dataset
    shares = {host: share * cfg.host_budget.get(host, 1.0) for host, share in part.host_budget.items()}
    doc["host_budget"] = {**cfg.host_budget, **shares}
    if cfg.cloud_tool and cfg.cloud_destination:
        doc["cloud_destination"] = f"{cfg.cloud_destination.rstrip('/')}/{part.name}"
    if push_url and "telemetry_push" in DOWNLOAD_FIELDS:  # the HTTP sink (house-core) reads it
        doc["telemetry_push"] = push_url
    return {k: v for k, v in doc.items() if v is not None}  # unset stays unset (null is not a choice)


def task_spec(cfg: DistributeConfig, dest: Destination, part: Partition, staging: str,
              collector: Collector | None, run_id: str) -> TaskSpec:
    local_input = "://" not in part.path
    input_name = os.path.basename(part.path) if local_input else part.path
    doc = task_config(cfg, dest, part, input_name, collector.url if collector else None, run_id)
    outputs = {}
    if staged(cfg):  # the sandbox is the task's own; its state file comes back, and goes to its rerun
        doc["_state"] = STATE_FILE
        outputs[STATE_FILE] = state_path(dest, part)
    elif dest.local:  # one writer per partition, across workers that share the folder
        doc["_lock"] = dest.path(f"_flowdc/locks/{part.name}.lock")
    doc["_time_limit_s"] = cfg.timeout_minutes * 60.0
    config_path = os.path.join(staging, f"{part.name}.json")
    fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it may hold storage keys
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1)
    inputs = {"task.json": config_path}
    if local_input:
        inputs[input_name] = part.path
    if outputs and os.path.isfile(outputs[STATE_FILE]):  # an earlier distribute run's
        inputs[STATE_FILE] = outputs[STATE_FILE]
    python = cfg.worker_python or sys.executable
    return TaskSpec(
        name=part.name, argv=[python, "-m", "flowdc.engines.task", "task.json"], inputs=inputs, outputs=outputs,
        env={TOKEN_ENV: collector.token} if collector else {}, cores=cfg.task_cores, memory_mb=cfg.task_memory_mb,
        disk_mb=cfg.task_disk_mb, worker_retries=MAX_LOST_RUNS)


def staged(cfg: DistributeConfig) -> bool:
    return bool(cfg.cloud_tool)


def state_path(dest: Destination, part: Partition) -> str:
    """Where a staged partition's state file comes back to, on the manager."""
    return dest.path(f"{PARTITIONS_DIR}/{part.name}.tar")


def run_distribute(cfg: DistributeConfig, engine: Engine | None = None) -> dict[str, Any]:
    parts = load_partitions(cfg.input)
    check_columns(cfg, parts)
    dest = Destination(cfg.output, cfg.storage_options)
    sweep_stale_staging()
    staging = tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-")
    try:
        if cfg.dry_run:
            return _dry_run(cfg, dest, parts, staging)
        if cfg.force:
            clear_dest(dest, cfg.storage_options, cfg.lease_ttl_s)
        claim_plan(dest, parts)
        return Distributor(cfg, dest, parts, staging, engine).run()
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def sweep_stale_staging() -> None:
    """Remove the staging folders of managers that died without cleaning up (kill -9): each is
    named after its manager's pid, and one whose pid still runs (perhaps reused) is kept."""
    root = tempfile.gettempdir()
    try:
        names = [n for n in os.listdir(root) if n.startswith(STAGING_PREFIX)]
    except OSError:
        return
    for name in names:
        pid = name[len(STAGING_PREFIX):].split("-", 1)[0]
        path = os.path.join(root, name)
        with contextlib.suppress(OSError):
            if pid.isdigit() and os.stat(path).st_uid == os.getuid() and process_gone(int(pid)):
                shutil.rmtree(path, ignore_errors=True)


def check_columns(cfg: DistributeConfig, parts: list[Partition]) -> None:
    """A wrong column name fails here, once, rather than in every task (exit 2, one line)."""
    from flowdc.manifest import Manifest

    first = next((p for p in parts if p.rows != 0 and "://" not in p.path), None)
    if first is not None:
        manifest = Manifest(first.path, cfg.url, cfg.input_format, cfg.batch_rows)
        if cfg.label:
            manifest.require_column(cfg.label, "label")


def _dry_run(cfg: DistributeConfig, dest: Destination, parts: list[Partition], staging: str) -> dict[str, Any]:
    tasks = []
    for part in parts:
        spec = task_spec(cfg, dest, part, staging, None, "dry-run")
        with open(spec.inputs["task.json"], encoding="utf-8") as fh:
            doc = json.load(fh)
        doc.pop("storage_options", None)
        task = {"task": part.name, "rows": part.rows, "command": spec.argv, "input": part.path,
                "output": doc["output"], "host_budget": doc["host_budget"], "cores": spec.cores,
                "memory_mb": spec.memory_mb, "disk_mb": spec.disk_mb, "time_limit_s": doc["_time_limit_s"]}
        if staged(cfg):  # the output is a folder of the task's sandbox; the shards and the state go here
            task.update(ships_to=doc.get("cloud_destination"), state_returns_to=spec.outputs[STATE_FILE])
        tasks.append(task)
        print(json.dumps(task))
    return {"dry_run": True, "tasks": tasks}


class Distributor:
    def __init__(self, cfg: DistributeConfig, dest: Destination, parts: list[Partition], staging: str,
                 engine: Engine | None) -> None:
        self.cfg = cfg
        self.dest = dest
        self.parts = parts
        self.staging = staging
        self.engine = engine or make_engine(cfg, staging)
        dest.makedirs()
        telemetry = dest.path(TELEMETRY_FILE) if dest.local else os.path.join(staging, "telemetry.jsonl")
        self.collector = Collector(telemetry, cfg.telemetry_host, cfg.telemetry_port)
        self.runs: dict[str, PartitionRun] = {}
        self.run_id = cfg.run_id or uuid.uuid4().hex[:12]
        self.live: LiveView | None = None

    def run(self) -> dict[str, Any]:
        started = time.time()
        interrupted = False
        self.collector.start()
        try:
            self.engine.start()
            self._announce()
            self.live = LiveView(len(self.parts), self.cfg.quiet)
            finished = 0
            for part in self.parts:
                spec = task_spec(self.cfg, self.dest, part, self.staging, self.collector, self.run_id)
                run = PartitionRun(part, spec)
                self.runs[part.name] = run
                if part.rows == 0:  # an empty partition has nothing to fetch
                    run.state = "done"
                    continue
                if self._finished_before(part):
                    self._finish(run, "done")
                    finished += 1
                    continue
                self._submit(run)
            if finished:
                self._note(f"flowdc: {finished} partition(s) finished in an earlier run: not run again")
            while any(r.state == "waiting" for r in self.runs.values()):
                outcome = self.engine.wait(WAIT_S)
                if outcome is not None:
                    self._settle(self.runs[outcome.name], outcome)
                self._refresh()
        except KeyboardInterrupt:
            interrupted = True
        finally:
            self.engine.close()
            if self.live is not None:
                self.live.close()
            self.collector.stop()
        summary = self._summary(started, interrupted)
        self._save(summary)
        if interrupted:
            raise KeyboardInterrupt
        return summary

    def _announce(self) -> None:
        if self.cfg.engine == "local":
            print(f"flowdc: running {len(self.parts)} partitions on {self.engine.address}", file=sys.stderr)
            return
        worker = "work_queue_worker" if self.cfg.engine == "workqueue" else "vine_worker"
        host, _, port = self.engine.address.rpartition(":")
        print(f"flowdc: {self.cfg.engine} manager listening on port {port}; start workers with: "
              f"{worker} {host} {port}", file=sys.stderr, flush=True)

    def _submit(self, run: PartitionRun) -> None:
        state = run.spec.outputs.get(STATE_FILE)
        if state and os.path.isfile(state):  # the rerun resumes from the state the last run returned
            run.spec.inputs[STATE_FILE] = state
        self.engine.submit(run.spec)

    def _take_back_state(self, run: PartitionRun) -> None:
        """A staged task's returned state (ledger, overview) to DEST/part-NNNNN, where a local run keeps it."""
        state = run.spec.outputs.get(STATE_FILE)
        if not state or not os.path.isfile(state):
            return
        stamp = os.stat(state).st_mtime_ns
        if stamp != run.state_stamp:
            unpack_state(state, self.dest.path(run.part.name))
            run.state_stamp = stamp

    def _settle(self, run: PartitionRun, outcome: TaskOutcome) -> None:
        self._take_back_state(run)
        if outcome.resubmitted:  # runs lost with their workers that the engine resubmitted unseen
            run.lost += outcome.resubmitted
            run.history += [{"ran": False, "exit_code": None, "worker": "", "t": round(time.time(), 3),
                             "detail": f"lost with its worker; {self.cfg.engine} resubmitted it"}
                            for _ in range(outcome.resubmitted)]
            self._note(f"flowdc: {run.part.name} lost {outcome.resubmitted} run(s) with its worker; {self.cfg.engine} "
                       "resubmitted it (it resumed from its ledger)")
        # A run that ended non-zero says why in its last line: the detail keeps it (engines only
        # fill detail for runs that did not run to their end).
        failed_run = outcome.ran and outcome.exit_code != 0
        detail = _last_line(outcome.output) if failed_run else outcome.detail
        if failed_run and outcome.exit_code == EXIT_WALL_TIME:  # its last line is the download's own advice
            detail = f"stopped at its wall-time limit (timeout_minutes={self.cfg.timeout_minutes:g})"
        run.history.append({"ran": outcome.ran, "exit_code": outcome.exit_code, "detail": detail,
                            "worker": outcome.worker, "t": round(time.time(), 3)})
        if outcome.ran and outcome.exit_code == 0:
            self._finish(run, "done")
            return
        if not outcome.ran:
            run.lost += 1
            again = run.lost <= MAX_LOST_RUNS
            why = f"lost its run ({outcome.detail or 'worker gone'})"
        else:
            run.failures += 1
            again = outcome.exit_code != EXIT_USAGE and run.failures <= self.cfg.task_retries
            why = f"exited {outcome.exit_code}: {detail}"
        if again:
            self._note(f"flowdc: {run.part.name} {why}; resubmitting (it resumes from its ledger)")
            self._submit(run)
        else:
            self._finish(run, "failed")
            run.history[-1]["output"] = outcome.output
            self._note(f"flowdc: {run.part.name} failed for good: {why}")

    def _finish(self, run: PartitionRun, state: str) -> None:
        run.state = state
        run.totals = self._row_totals(run.part)

    def _row_totals(self, part: Partition) -> dict[str, Any]:
        return dict((self._overview(part) or {}).get("totals", {}))

    def _note(self, line: str) -> None:
        from tqdm import tqdm

        tqdm.write(line, file=sys.stderr)

    def counts(self) -> dict[str, int]:
        states = [r.state for r in self.runs.values()]
        unfinished = states.count("waiting")
        running = min(self.engine.running(), unfinished)
        return {"done": states.count("done"), "failed": states.count("failed"), "running": running,
                "waiting": unfinished - running + (len(self.parts) - len(self.runs))}

    def _refresh(self) -> None:
        assert self.live is not None
        self.live.update(**self.counts(), workers=self.engine.workers(), totals=self.live_totals())

    def live_totals(self) -> dict[str, Any]:
        """The collector's totals, with each settled partition's rows taken from its overview.

        A task's telemetry counts only what that run stored: a run resubmitted after a lost one
        starts from 0, its predecessor's stored rows in its already_done. The overview counts the
        ledger, as the summary does, so the line ends on the summary's figures.
        """
        latest = self.collector.latest()
        totals = dict(latest["totals"])
        for run in self.runs.values():
            if run.totals is None:
                continue
            pushed = latest["partitions"].get(f"{self.run_id}/{run.part.name}", {})
            for key in ("ok", "failed", "skipped"):
                totals[key] = totals.get(key, 0) - _count(pushed.get(key)) + _count(run.totals.get(key))
        return totals

    def _summary(self, started: float, interrupted: bool) -> dict[str, Any]:
        totals = {"ok": 0, "failed": 0, "skipped": 0, "rows": 0}
        partitions = []
        for run in self.runs.values():
            row_totals = run.totals if run.totals is not None else self._row_totals(run.part)
            for key in totals:
                totals[key] += int(row_totals.get(key, 0) or 0)
            partitions.append({"name": run.part.name, "partition": run.part.number, "state": run.state,
                               "rows": run.part.rows,
                               "failures": run.failures, "lost": run.lost, "runs": run.history,
                               "host_budget": run.part.host_budget, "output": self.dest.url(run.part.name),
                               "totals": row_totals})
        return {"run_id": self.run_id, "engine": self.cfg.engine, "input": self.cfg.input, "output": self.dest.url(),
                "started": started, "elapsed_s": round(time.time() - started, 3), "interrupted": interrupted,
                "partitions_done": sum(r.state == "done" for r in self.runs.values()),
                "partitions_failed": sum(r.state == "failed" for r in self.runs.values()),
                "partitions": partitions, "totals": totals, "telemetry_lines": self.collector.lines,
                "config": public_dict(self.cfg)}

    def _finished_before(self, part: Partition) -> bool:
        """An earlier run of this plan left the partition with nothing to do: it ran to its end, and
        its ledger holds every row in a final state (stored, skipped, failed for good). Run again, it
        would only find that out, on a worker: a rerun of a finished Work Queue run waited for one."""
        from flowdc.consolidate import sub_destination
        from flowdc.ledger import Ledger

        overview = self._overview(part)
        if overview is None or overview.get("interrupted"):
            return False
        done = Ledger(sub_destination(self.dest, part.name, self.cfg.storage_options)).done_index()
        return done.idents.size == part.rows and bool(done.final.all())

    def _overview(self, part: Partition) -> dict[str, Any] | None:
        try:
            return json.loads(self.dest.read_bytes(f"{part.name}/overview.json"))
        except Exception:  # not written (empty partition, failed task): the summary says so
            return None

    def _save(self, summary: dict[str, Any]) -> None:
        self.dest.write_bytes(SUMMARY_FILE, json.dumps(summary, indent=1, default=str).encode())
        if not self.dest.local and os.path.isfile(self.collector.jsonl_path):
            with open(self.collector.jsonl_path, "rb") as fh:
                self.dest.write_bytes(TELEMETRY_FILE, fh.read())


def _count(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def _last_line(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else "(no output)"


def summary_text(summary: dict[str, Any]) -> str:
    t = summary["totals"]
    lines = [f"flowdc: {summary['partitions_done']}/{len(summary['partitions'])} partitions done, "
             f"{summary['partitions_failed']} failed; {t['ok']}/{t['rows']} rows stored, {t['failed']} failed, "
             f"{t['skipped']} skipped in {summary['elapsed_s']:.1f}s — output: {summary['output']}"]
    for p in summary["partitions"]:
        if p["state"] == "failed":
            lines.append(f"  {p['name']} failed after {p['failures']} failed and {p['lost']} lost runs")
    return "\n".join(lines)

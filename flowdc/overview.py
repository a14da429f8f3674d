"""overview.json: what a run did and what the output now holds, for people and for scripts."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flowdc.config import DownloadConfig, public_dict
from flowdc.ledger import Ledger
from flowdc.network import INSECURE_WARNING, network_summary
from flowdc.progress import RunCounters
from flowdc.storage import Destination
from flowdc.writers.labelmap import LABELS_FILE, read_label_map
from flowdc.writers.naming import OVERVIEW_FILE

MAX_HOSTS_LISTED = 1000
MAX_LABELS_LISTED = 1000  # the whole map is in LABELS_FILE
CLIENT_BOUND_SHARE = 0.5  # the summary says the client was the bottleneck past this share of the run...
CLIENT_ADVICE_MIN_S = 5.0  # ... of a run this long at least: a short one's few ticks say little, and it gains nothing
REASONS_LISTED = 5  # the summary's "not stored" line names this many reasons, the most frequent
# One host done this long after every other, and this share of the run's time: its own limits set
# the run's end (a rate-limited host with many rows), which more machines would not shorten.
LONG_POLE_MIN_S = 5.0
LONG_POLE_SHARE = 0.2


def build_overview(cfg: DownloadConfig, ledger: Ledger, run: RunCounters, host_snapshots: dict[str, dict[str, Any]],
                   started_wall: float, recovery: dict[str, int], interrupted: bool,
                   manifest_rows: int | None = None, manifest_problems: list[str] | None = None) -> dict[str, Any]:
    """`manifest_rows`: the manifest's row count where its format tells it (parquet), else None;
    `manifest_problems`: what reading it skipped (Manifest.problems), shown among the warnings."""
    latest = ledger.latest([*Ledger.SUMMARY_COLUMNS, "ts"])  # read once, used twice
    totals = ledger.summary(latest)
    groups = HostGroups.of(latest, started_wall)  # grouped once, for the hosts and the long pole
    elapsed = run.elapsed()
    attempted = run.ok + run.failed + run.skipped
    config = public_dict(cfg)  # URLs redacted, storage option values left out
    return {
        "tool": "flowdc",
        "output": config["output"],
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_wall)),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "interrupted": interrupted,
        "config": config,
        "totals": {k: totals[k] for k in ("rows", "ok", "failed", "skipped")},
        "manifest_rows": manifest_rows,
        "success_rate": round(totals["ok"] / totals["rows"], 6) if totals["rows"] else 0.0,
        "bytes": totals["bytes"],
        "errors": totals["errors"],
        "this_run": {
            "finished_rows": attempted,
            "ok": run.ok,
            "failed": run.failed,
            "skipped": run.skipped,
            "already_done": run.already_done,
            "retries": run.retries,
            "bytes": run.bytes,
            "errors": dict(run.errors.most_common()),
            "recovered": recovery,
            # Ticks of the run in which our own event loop lagged: the client, not the hosts, set the pace.
            "client_busy_share": round(run.client_busy_share, 3),
        },
        "elapsed_s": round(elapsed, 3),
        "images_per_s": round(run.ok / elapsed, 2),
        "mb_per_s": round(run.bytes / elapsed / 1e6, 3),
        "hosts": per_host(groups, host_snapshots),
        "long_pole": None if interrupted else long_pole(groups, elapsed),
        **labels_section(cfg, ledger.dest),
        "network": network_summary(cfg),
        "warnings": [*([INSECURE_WARNING] if cfg.insecure else []), *(manifest_problems or [])],
    }


def labels_section(cfg: DownloadConfig, dest: Destination) -> dict[str, Any]:
    """The label map of a labelled imagefolder (folder -> label), as its file holds it."""
    if not cfg.label or cfg.output_format != "imagefolder":
        return {}
    doc = read_label_map(dest)
    if doc is None:
        return {}
    folders = doc.get("folders") or {}
    listed = dict(list(folders.items())[:MAX_LABELS_LISTED])
    return {"labels": {"map_file": LABELS_FILE, "classes": len(folders), "listed": len(listed),
                       "missing_label_folder": doc.get("missing_label_folder"), "folders": listed,
                       "merged": doc.get("merged") or {}}}


@dataclass(frozen=True)
class HostGroups:
    """The ledger rows that name a host, grouped once for every per-host figure: each row's host as
    a code, the codes' names, and with the run's start each host's `done` (seconds from the start
    to its last row this run recorded; NaN for none: rows done in an earlier run keep their times)."""

    rows: pa.Table
    codes: np.ndarray
    names: list[str]
    done: np.ndarray | None = None

    @classmethod
    def of(cls, latest: pa.Table, started_wall: float | None = None) -> HostGroups:
        latest = latest.filter(pc.is_valid(latest["host"])) if latest.num_rows else latest
        if latest.num_rows == 0:
            return cls(latest, np.zeros(0, np.int64), [])
        hosts_col = latest["host"].combine_chunks()
        if not pa.types.is_dictionary(hosts_col.type):
            hosts_col = pc.dictionary_encode(hosts_col)
        codes = hosts_col.indices.to_numpy(zero_copy_only=False)
        names = hosts_col.dictionary.to_pylist()
        done = None if started_wall is None else _done_by_code(codes, latest["ts"], len(names), started_wall)
        return cls(latest, codes, names, done)


def per_host(groups: HostGroups, host_snapshots: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per-host figures from the ledger's latest states, with the controller's last snapshot if any,
    and `done_s` when the groups know the run's start (None if this run recorded none of the host's
    rows). Counted with numpy over the host column's codes: a table's group_by loads pyarrow's query
    engine (10 ms of a run's tail) for a few sums."""
    latest, codes, names, done = groups.rows, groups.codes, groups.names, groups.done
    if latest.num_rows == 0:
        return {}
    rows = np.bincount(codes, minlength=len(names))
    stored = pc.equal(latest["status"], "ok").to_numpy(zero_copy_only=False)
    ok = np.bincount(codes, weights=stored, minlength=len(names))
    # Bytes stored: a refused body (not decodable, say) has its size in the ledger, but none on disk.
    sizes = np.bincount(codes, weights=pc.fill_null(latest["bytes"], 0).to_numpy(zero_copy_only=False) * stored,
                        minlength=len(names))
    medians = _medians_by_code(codes, latest["ttfb_ms"], len(names))
    hosts: dict[str, dict[str, Any]] = {}
    for code in np.argsort(-rows, kind="stable")[:MAX_HOSTS_LISTED].tolist():
        if not rows[code]:
            break  # a dictionary value no row uses
        name = names[code]
        figures = {"rows": int(rows[code]), "ok": int(ok[code]), "bytes": int(sizes[code]),
                   "ttfb_median_ms": None if np.isnan(medians[code]) else _round(float(medians[code]))}
        if done is not None:
            figures["done_s"] = None if np.isnan(done[code]) else _round(float(done[code]))
        snap = host_snapshots.get(name)
        if snap:
            figures["controller"] = snap
        hosts[name] = figures
    return hosts


def _done_by_code(codes: np.ndarray, ts: pa.ChunkedArray, groups: int, started_wall: float) -> np.ndarray:
    when = pc.fill_null(ts, 0.0).to_numpy(zero_copy_only=False).astype(np.float64)
    mine = when >= started_wall
    last = np.full(groups, -np.inf)
    np.maximum.at(last, codes[mine], when[mine])
    return np.where(np.isinf(last), np.nan, last - started_wall)


def long_pole(groups: HostGroups, elapsed_s: float) -> dict[str, Any] | None:
    """The host done last, when it was done long after every other (LONG_POLE_MIN_S and
    LONG_POLE_SHARE of the run); over every host, listed or not. None otherwise (also when the
    groups do not know the run's start)."""
    done = groups.done
    if done is None or len(groups.names) < 2:
        return None
    order = np.argsort(np.nan_to_num(done, nan=-np.inf))
    last, runner_up = done[order[-1]], done[order[-2]]
    if np.isnan(runner_up) or last - runner_up < max(LONG_POLE_MIN_S, LONG_POLE_SHARE * elapsed_s):
        return None
    return {"host": groups.names[order[-1]], "done_s": _round(float(last)),
            "after_every_other_s": _round(float(last - runner_up))}


def _medians_by_code(codes: np.ndarray, values: pa.ChunkedArray, groups: int) -> np.ndarray:
    """The median of each group's non-null values (NaN for a group without one)."""
    valid = values.is_valid().to_numpy(zero_copy_only=False)
    codes = codes[valid]
    numbers = pc.drop_null(values).to_numpy(zero_copy_only=False).astype(np.float64)
    order = np.lexsort((numbers, codes))
    numbers = numbers[order]
    counts = np.bincount(codes, minlength=groups)
    starts = np.cumsum(counts) - counts
    medians = np.full(groups, np.nan)
    has = counts > 0
    low, high = starts[has] + (counts[has] - 1) // 2, starts[has] + counts[has] // 2
    medians[has] = (numbers[low] + numbers[high]) / 2
    return medians


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _limits_shown(controller: dict[str, Any]) -> str:
    """' (paced at 2.0/s, 14 refusals)' from a host's last controller snapshot, or ''."""
    shown = []
    if controller.get("pace_per_s"):
        shown.append(f"paced at {controller['pace_per_s']:.1f}/s")
    if controller.get("n_429_503"):
        shown.append(f"{controller['n_429_503']} refusals (429/503)")
    return f" ({', '.join(shown)})" if shown else ""


def write_overview(dest: Destination, overview: dict[str, Any]) -> None:
    dest.write_bytes(OVERVIEW_FILE, json.dumps(overview, indent=2, default=str).encode())


def summary_text(overview: dict[str, Any], where: str) -> str:
    t = overview["totals"]
    run = overview["this_run"]
    # An interrupted run's ledger holds only the rows read so far; the manifest may say how many it has.
    rows = max(t["rows"], overview.get("manifest_rows") or 0)
    stored = f"{t['ok']}/{rows} rows stored ({t['ok'] / rows if rows else 0.0:.1%})"
    if overview.get("interrupted") and not overview.get("manifest_rows"):  # text: counted as it is read
        stored = f"{t['ok']} rows stored so far, of a manifest not read to its end"
    lines = [
        f"flowdc: {stored}, {t['failed']} failed, {t['skipped']} skipped — output: {where}",
        f"  this run: {run['ok']} ok, {run['failed']} failed, {run['skipped']} skipped, {run['already_done']} already "
        f"done, {run['retries']} retries, {run['bytes'] / 1e6:.1f} MB in {overview['elapsed_s']:.1f}s "
        f"({overview['images_per_s']:.0f} img/s, {overview['mb_per_s']:.1f} MB/s)",
    ]
    if overview["errors"]:
        reasons = list(overview["errors"].items())
        top = ", ".join(f"{reason} x{n}" for reason, n in reasons[:REASONS_LISTED])
        left_out = len(reasons) - REASONS_LISTED
        more = f" and {left_out} more reasons (overview.json)" if left_out > 0 else ""
        lines.append(f"  not stored: {top}{more}")
    pole = overview.get("long_pole")
    if pole:
        lines.append(f"  {pole['host']} was done {pole['after_every_other_s']:.0f} s after every other host"
                     f"{_limits_shown(overview['hosts'].get(pole['host'], {}).get('controller', {}))}: "
                     "its own limits set the run's end, which more machines would not bring sooner")
    if run.get("client_busy_share", 0.0) >= CLIENT_BOUND_SHARE and overview["elapsed_s"] >= CLIENT_ADVICE_MIN_S:
        lines.append(f"  this machine set the pace for {run['client_busy_share']:.0%} of the run, not the hosts: "
                     "split the manifest (flowdc partition) over more machines to go faster")
    unshipped = (overview.get("uploads") or {}).get("failed") or []
    if unshipped:
        lines.append(f"  uploads: {len(unshipped)} file(s) not shipped with {overview['uploads']['tool']} (kept in the "
                     f"output; run the same command again to ship them): {', '.join(unshipped[:3])}"
                     f"{' ...' if len(unshipped) > 3 else ''}")
    for warning in overview.get("warnings", []):
        lines.append(f"  warning: {warning}")
    if overview.get("interrupted"):
        lines.append("  interrupted: run the same command again to resume")
    return "\n".join(lines)

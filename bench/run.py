"""Benchmark runner: FLOW-DC against a bare aiohttp loop and img2dataset on the same fake hosts.

    python bench/run.py SCENARIO [--rows N] [--out DIR] [--concurrency N]
                                 [--only flowdc,flowdc_wds,flowdc_nopaarc,bare,baseline,baseline_wds,img2dataset]
                                 [--timeout S] [--keep] [--rounds N] [--pick best|median] [--baseline REV]

Starts the scenario's fake hosts in a thread of this process, writes the manifest, then runs
each contender as a subprocess, one after another, with the farm's counters reset in between:
flowdc (with each of the scenario's option sets: `flowdc_runs`, e.g. the defaults and
webdataset), flowdc --disable_paarc (scenarios that ask for it), bench/bare_loop.py, and
img2dataset 1.47 from its own venv (bench/img2dataset_contender.py; only with --only
...,img2dataset, as making that venv takes a minute the first time). Each run is
killed after its timeout. Wall time, CPU time and peak RSS (the process and its children) are
measured here; flowdc's own figures come from OUTPUT/overview.json. A table goes to stdout and a markdown
section is appended to bench/results/latest.md.

`--baseline REV` adds another commit of FLOW-DC as a contender: REV is checked out into a
temporary `git worktree` and its `flowdc download` runs beside the current code's, with the same
options, in the same rounds and in turn first (so a burst of load on a shared machine hits both alike):
`baseline` with the options of the scenario's first flowdc run, `baseline_wds` with flowdc_wds's.

With `--rounds N` each contender's best or median round is reported, and each ratio (against the
bare loop, against the baseline) is also given round by round with its median: the runs of one
round are minutes apart at most, so a slow stretch of this shared machine weighs on both sides.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # usable from a checkout that was not pip-installed

from hostends import HostEnds, ends_line, host_ends  # noqa: E402
from img2dataset_contender import Img2datasetUnavailable, run_img2dataset  # noqa: E402
from measure import Measured, measure, tail  # noqa: E402
from realistic import noise_images  # noqa: E402
from scenarios import (  # noqa: E402
    SCENARIOS,
    ManifestInfo,
    Scenario,
    host_hold,
    host_makespan,
    img2dataset_settings,
    slowest_retry_chain,
    write_scenario_manifest,
    write_synthetic_manifest,
)
from verify import Verified, expected_bodies, verify_imagefolder, verify_resized, verify_webdataset  # noqa: E402

from flowdc.testing.fakehosts import FakeHostFarm, HostSpec, run_farm_in_thread  # noqa: E402

RESULTS_MD = ROOT / "bench" / "results" / "latest.md"
CONTENDERS = ("flowdc", "flowdc_wds", "flowdc_nopaarc", "bare", "baseline", "baseline_wds", "img2dataset")
DEFAULT_CONTENDERS = ("flowdc", "flowdc_wds", "flowdc_nopaarc", "bare", "baseline")  # img2dataset when asked for


@dataclass
class RunResult:
    name: str
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    wall_s: float = 0.0
    tool_elapsed_s: float | None = None
    tool_images_per_s: float | None = None
    peak_rss_mb: float = 0.0
    requests: int = 0
    n_429: int = 0
    max_in_system: int = 0
    corrupt: int | None = None  # images in the output that differ from what the host served
    farm_cpu_pct: float | None = None  # this process's CPU while the contender ran: near 100 = server-bound
    cpu_s: float | None = None  # the contender's own CPU (user + system, its child processes included)
    load_before: float | None = None  # 1-min load average at the start: other work skews the figures
    returncode: int | None = None
    note: str = ""
    errors: dict[str, int] = field(default_factory=dict)
    round_rates: list[float] = field(default_factory=list)  # images/s of every round, in order (--rounds)
    ends: HostEnds | None = None  # a flowdc run's first row and each host's last, from its ledger

    @property
    def wall_images_per_s(self) -> float:
        return self.ok / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def frac_429(self) -> float:
        return self.n_429 / self.requests if self.requests else 0.0


# -- running one contender ----------------------------------------------------------------------


def flowdc_available() -> bool:
    return importlib.util.find_spec("flowdc.__main__") is not None


def flowdc_options(scenario: Scenario, name: str) -> tuple[str, ...]:
    """The options a flowdc contender runs with: its own run's, else the first run's (baseline, nopaarc);
    baseline_wds runs with flowdc_wds's."""
    runs = dict(scenario.flowdc_runs)
    return runs.get(name.replace("baseline", "flowdc"), scenario.flowdc_runs[0][1])


def flowdc_names(scenario: Scenario) -> list[str]:
    return [name for name, _ in scenario.flowdc_runs]


def run_flowdc(
    scenario: Scenario, manifest: Path, out: Path, concurrency: int, timeout_s: float, *, paarc: bool,
    name: str | None = None, source: Path = ROOT, host_names: Mapping[str, str] | None = None,
) -> RunResult:
    name = name or ("flowdc" if paarc else "flowdc_nopaarc")
    result = RunResult(name)
    if source == ROOT and not flowdc_available():
        result.note = "skipped: flowdc CLI not available yet (no flowdc/__main__.py)"
        return result
    telemetry = out.parent / f"{name}.telemetry.jsonl"
    telemetry.unlink(missing_ok=True)  # one run per file (with --rounds: the last round's)
    cmd = [
        sys.executable, "-m", "flowdc", "download",
        "--input", str(manifest), "--output", str(out), "--url", "url", "--quiet",
        *flowdc_options(scenario, name),
        "--concurrent_downloads", str(concurrency),
        "--telemetry", str(telemetry),
        *scenario.flowdc_args,
    ]  # fmt: skip
    if not paarc:
        cmd.append("--disable_paarc")
    m = measure(cmd, timeout_s, out.parent / f"{name}.logs", source)
    _fill_measured(result, m, timeout_s)
    overview_path = out / "overview.json"
    if not overview_path.is_file():
        result.note = result.note or f"no overview.json; stderr: {tail(m.stderr)}"
        return result
    ov = json.loads(overview_path.read_text())
    totals = ov.get("totals", {})
    result.ok, result.failed, result.skipped = (int(totals.get(k, 0)) for k in ("ok", "failed", "skipped"))
    result.tool_elapsed_s = ov.get("elapsed_s")
    result.tool_images_per_s = ov.get("images_per_s")
    result.errors = dict(ov.get("errors", {}))
    if host_names is not None:
        result.ends = host_ends(out, m.started_at, host_names)
    return result


def run_bare(scenario: Scenario, manifest: Path, out: Path, concurrency: int, timeout_s: float) -> RunResult:
    result = RunResult("bare")
    cmd = [
        sys.executable, str(ROOT / "bench" / "bare_loop.py"),
        "--input", str(manifest), "--output", str(out), "--url", "url",
        "--concurrency", str(concurrency),
        *scenario.bare_args,
    ]  # fmt: skip
    m = measure(cmd, timeout_s, out.parent / "bare.logs")
    _fill_measured(result, m, timeout_s)
    lines = m.stdout.strip().splitlines()
    if not lines:
        result.note = result.note or f"no output; stderr: {tail(m.stderr)}"
        return result
    data = json.loads(lines[-1])
    result.ok, result.failed = int(data["ok"]), int(data["failed"])
    result.tool_elapsed_s = data.get("elapsed_s")
    result.tool_images_per_s = data.get("images_per_s")
    result.errors = dict(data.get("errors", {}))
    return result


def run_img2dataset_contender(scenario: Scenario, info: ManifestInfo, out: Path, concurrency: int,
                              timeout_s: float) -> RunResult:
    result = RunResult("img2dataset")
    settings = img2dataset_settings(scenario, info.rows, concurrency)
    try:
        run = run_img2dataset(info.path, out, settings, timeout_s=timeout_s, log_dir=out.parent / "img2dataset.logs",
                              rows=info.rows)
    except Img2datasetUnavailable as e:
        result.note = f"skipped: {e}"
        return result
    result.ok, result.failed, result.errors = run.ok, run.failed, run.errors
    result.wall_s, result.peak_rss_mb, result.returncode = run.wall_s, run.peak_rss_mb, run.returncode
    result.note = run.note
    result.tool_elapsed_s = run.tool_elapsed_s
    if run.tool_elapsed_s:
        result.tool_images_per_s = round(run.ok / run.tool_elapsed_s, 1)
    result.corrupt = run.problems  # missing, undecodable or wrongly sized images (not a byte compare)
    return result


def _fill_measured(result: RunResult, m: Measured, timeout_s: float) -> None:
    result.wall_s = round(m.wall_s, 3)
    result.peak_rss_mb = round(m.peak_rss_mb, 1)
    result.returncode = m.returncode
    if m.returncode is None:
        result.note = f"killed after the {timeout_s:.0f} s timeout"
    elif m.returncode != 0:
        result.note = f"exit {m.returncode}: {tail(m.stderr)}"


# -- the whole benchmark ------------------------------------------------------------------------


def _cpu_seconds() -> tuple[float, float]:
    """User + system CPU of this process, and of its finished child processes (and the children
    they waited for)."""
    t = psutil.Process().cpu_times()
    return t.user + t.system, t.children_user + t.children_system


@contextlib.contextmanager
def farm_for(scenario: Scenario) -> Iterator[FakeHostFarm | None]:
    if scenario.synthetic:
        yield None
        return
    preset = None
    if scenario.images:
        t0 = time.monotonic()
        preset = noise_images(scenario.rows, scenario.images, scenario.seed, scenario.image_style)
        sizes = [len(b) for b in preset.values()]
        print(f"[bench] {len(preset)} images ready in {time.monotonic() - t0:.1f} s: "
              f"{min(sizes) / 1024:.0f}-{max(sizes) / 1024:.0f} KB, mean {sum(sizes) / len(sizes) / 1024:.1f} KB")
    with run_farm_in_thread(scenario.hosts, preset=preset) as farm:
        yield farm


def prepare_manifest(scenario: Scenario, farm: FakeHostFarm | None, path: Path, rows: int) -> ManifestInfo:
    if farm is None:
        return write_synthetic_manifest(path, rows)
    return write_scenario_manifest(scenario, [h.base_url for h in farm.hosts], path, rows)


def ram_disk(min_free: int = 4 << 30) -> str | None:
    """/dev/shm when it has room, else None (the system temp dir).

    On disk, creating many small files right after deleting many others can cost several times
    the usual system time (ext4 here: 20k files took 0.8 s or 5-10 s by the state of the file
    system), which would decide the bare loop's result more than its downloading does.
    """
    shm = "/dev/shm"
    try:
        usage = shutil.disk_usage(shm)
    except OSError:
        return None
    return shm if os.access(shm, os.W_OK) and usage.free >= min_free else None


def run_benchmark(args: argparse.Namespace) -> tuple[Scenario, ManifestInfo, list[RunResult]]:
    scenario = SCENARIOS[args.scenario]
    rows = args.rows or scenario.rows
    concurrency = args.concurrency or scenario.concurrency
    timeout_s = args.timeout or scenario.timeout_s
    wanted = set(args.only.split(",")) if args.only else set(DEFAULT_CONTENDERS)
    if not args.only and scenario.img2dataset is not None:
        wanted.add("img2dataset")  # the scenario is about it
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix=f"flowdc-bench-{scenario.name}-",
                                                                 dir=ram_disk()))
    work.mkdir(parents=True, exist_ok=True)
    results: list[RunResult] = []
    compile_tree(ROOT)
    with baseline_checkout(args.baseline) as baseline, farm_for(scenario) as farm:
        t0 = time.monotonic()
        info = prepare_manifest(scenario, farm, work / "manifest.parquet", rows)
        print(f"[bench] {scenario.name}: {rows} rows written in {time.monotonic() - t0:.1f} s to {info.path}")
        plan: list[str] = flowdc_names(scenario) + (baseline_names(scenario) if args.baseline else [])
        if scenario.compare_no_paarc:
            plan.append("flowdc_nopaarc")
        if scenario.run_bare:
            plan.append("bare")
        if not scenario.synthetic:
            plan.append("img2dataset")
        runs: list[RunResult] = []
        # Rounds alternate the contenders, so a burst of load on this shared machine hits each one
        # alike; each contender's best (or median) round is reported.
        for round_index in range(args.rounds):
            for name in round_order([p for p in plan if p in wanted], round_index):
                runs.append(run_contender(name, scenario, info, farm, work, concurrency, timeout_s, args.keep,
                                          baseline))
        results = pick_rounds(runs, args.rounds, args.pick)
    (work / "results.json").write_text(json.dumps([asdict(r) for r in results], indent=1))
    if not args.out and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return scenario, info, results


def baseline_names(scenario: Scenario) -> list[str]:
    """The --baseline contenders: "baseline" beside the first flowdc run, "baseline_wds" beside flowdc_wds."""
    return ["baseline"] + (["baseline_wds"] if "flowdc_wds" in flowdc_names(scenario) else [])


def round_order(names: list[str], round_index: int) -> list[str]:
    """The contenders of one round: odd rounds run the even rounds' order backwards (A-B, B-A) and
    each pair of rounds starts one further along. So no contender always runs first (the
    invocation's first run meets a cold page cache) or always right after the same one (a run on
    tmpfs reuses the pages the run before it freed, and measured 4-8% faster for it)."""
    if not names:
        return []
    start = (round_index // 2) % len(names)
    order = names[start:] + names[:start]
    return order[::-1] if round_index % 2 else order


def pick_rounds(runs: list[RunResult], rounds: int, pick: str = "best") -> list[RunResult]:
    """Per contender, in first-run order, one round: the one with the most ok rows in the least time
    (best), or the median round by wall time among those with the most ok rows (median)."""
    by_name: dict[str, list[RunResult]] = {}
    for r in runs:
        by_name.setdefault(r.name, []).append(r)
    chosen: list[RunResult] = []
    for mine in by_name.values():
        top = max(r.ok for r in mine)
        full = sorted((r for r in mine if r.ok == top), key=lambda r: r.wall_s)
        r = full[0] if pick == "best" else full[(len(full) - 1) // 2]
        r.round_rates = [x.wall_images_per_s for x in mine]
        if rounds > 1:  # every round's wall time, so a bad round shows even when it is not reported
            walls = ", ".join(f"{x.wall_s:.1f}" for x in mine)
            r.note = (r.note + "; " if r.note else "") + f"{pick} of {rounds} (wall s: {walls})"
        chosen.append(r)
    return chosen


def compile_tree(root: Path) -> None:
    """Write the bytecode of a flowdc checkout before its runs are timed, as an installed flowdc has it:
    where PYTHONDONTWRITEBYTECODE is set every start would compile flowdc anew (60 ms here). The
    current tree and a --baseline worktree alike."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(root / "flowdc")], capture_output=True)


@contextlib.contextmanager
def baseline_checkout(rev: str | None) -> Iterator[Path | None]:
    """REV checked out into a temporary git worktree (removed after), or None without a REV."""
    if not rev:
        yield None
        return
    tmp = Path(tempfile.mkdtemp(prefix="flowdc-baseline-"))
    path = tmp / "src"
    done = subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev],
                          capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SystemExit(f"bench: cannot check out --baseline {rev}: {tail(done.stderr, 1)}")
    sha = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    compile_tree(path)
    print(f"[bench] baseline {rev} ({sha}) checked out in {path}")
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def run_contender(name: str, scenario: Scenario, info: ManifestInfo, farm: FakeHostFarm | None, work: Path,
                  concurrency: int, timeout_s: float, keep: bool, baseline: Path | None = None) -> RunResult:
    out = work / f"out-{name}"
    remove_output(out)
    if farm is not None:
        farm.reset_stats()
    print(f"[bench] running {name} ...", flush=True)
    cpu0, children_cpu0 = _cpu_seconds()
    load = os.getloadavg()[0]
    names = host_names(scenario, farm)
    if name == "bare":
        result = run_bare(scenario, info.path, out, concurrency, timeout_s)
    elif name == "img2dataset":
        result = run_img2dataset_contender(scenario, info, out, concurrency, timeout_s)
    elif name.startswith("baseline"):
        assert baseline is not None
        result = run_flowdc(scenario, info.path, out, concurrency, timeout_s, paarc=True, name=name, source=baseline,
                            host_names=names)
    else:
        result = run_flowdc(scenario, info.path, out, concurrency, timeout_s, paarc=name != "flowdc_nopaarc",
                            name=name, host_names=names)
    result.load_before = round(load, 2)
    cpu1, children_cpu1 = _cpu_seconds()
    if result.wall_s > 0:
        result.cpu_s = round(children_cpu1 - children_cpu0, 2)
    if farm is not None and result.wall_s > 0:
        result.farm_cpu_pct = round(100 * (cpu1 - cpu0) / result.wall_s, 1)
    if farm is not None:
        totals = farm.totals()
        result.requests, result.n_429 = totals.get("requests", 0), totals.get("n_429", 0)
        result.max_in_system = totals.get("max_in_system", 0)
        if name not in ("bare", "img2dataset") and (out / "overview.json").is_file():
            verified = verify_output(out, farm, scenario)
            result.corrupt = verified.corrupt + max(0, result.ok - verified.images)  # missing ones too
            if verified.note:
                result.note = (result.note + "; " if result.note else "") + verified.note
    if not keep:
        remove_output(out)
    return result


def host_names(scenario: Scenario, farm: FakeHostFarm | None) -> dict[str, str] | None:
    """The ledger's host (host:port) -> the scenario's name for that host; None without a farm."""
    if farm is None:
        return None
    return {host.netloc: host_label(spec) for spec, host in zip(scenario.hosts, farm.hosts, strict=True)}


def host_label(spec: HostSpec) -> str:
    """A host's name in the bench's lines: the scenario's, else its address."""
    return spec.name or spec.ip


def own_held_ideals(scenario: Scenario, info: ManifestInfo) -> dict[str, float | None]:
    """Each host's own least makespan with its hold (None where it has no limit): to read a host's
    last row against."""
    ideals: dict[str, float | None] = {}
    for spec, rows in zip(scenario.hosts, info.rows_per_host, strict=True):
        span = host_makespan(spec, rows) if rows else None
        ideals[host_label(spec)] = None if span is None else span + host_hold(spec)
    return ideals


def ends_lines(scenario: Scenario, info: ManifestInfo, results: list[RunResult]) -> list[str]:
    if not info.rows_per_host:
        return []
    ideals = own_held_ideals(scenario, info)
    return [ends_line(r.name, r.ends, ideals) for r in results if r.ends is not None]


def remove_output(out: Path) -> None:
    """The output and the archives beside it (a round must not find an earlier round's archive)."""
    shutil.rmtree(out, ignore_errors=True)
    for archive in out.parent.glob(f"{out.name}.*tar*"):
        archive.unlink()


def verify_output(out: Path, farm: FakeHostFarm, scenario: Scenario) -> Verified:
    """Every stored image as served, in whichever layout the run wrote (and its archive, if any);
    resized by the scenario's rule when it resizes."""
    expected = expected_bodies(farm)
    if scenario.img2dataset is not None and scenario.img2dataset.resizes:
        return verify_resized(out, expected, scenario.img2dataset)
    if any(out.glob("*.tar")):
        return verify_webdataset(out, expected)
    return verify_imagefolder(out, expected)


# -- reporting ----------------------------------------------------------------------------------

COLUMNS = (
    "run", "ok", "failed", "wall s", "CPU s", "img/s wall", "img/s tool", "peak RSS MB",
    "requests", "429s", "429 frac", "wall/ideal", "wall/held ideal", "corrupt", "farm CPU%", "load", "note",
)  # fmt: skip


def _row(r: RunResult, info: ManifestInfo) -> list[str]:
    def num(x: float | None, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    ideal = info.ideal_makespan_s
    ran = r.returncode is not None or r.wall_s > 0
    return [
        r.name,
        str(r.ok) if ran else "-",
        str(r.failed) if ran else "-",
        num(r.wall_s if ran else None, ".1f"),
        num(r.cpu_s, ".1f"),
        num(r.wall_images_per_s if ran else None, ".0f"),
        num(r.tool_images_per_s, ".0f"),
        num(r.peak_rss_mb if ran else None, ".0f"),
        str(r.requests) if r.requests else "-",
        str(r.n_429) if r.requests else "-",
        num(r.frac_429 if r.requests else None, ".3f"),
        num(r.wall_s / ideal if ideal and ran else None, ".2f"),
        num(r.wall_s / info.held_ideal_s if info.held_ideal_s and ran else None, ".2f"),
        "-" if r.corrupt is None else str(r.corrupt),
        num(r.farm_cpu_pct, ".0f"),
        num(r.load_before, ".1f"),
        r.note,
    ]


def ratio_lines(scenario: Scenario, results: list[RunResult]) -> list[str]:
    by = {r.name: r for r in results if r.wall_s > 0 and r.ok}
    lines = []
    chain = slowest_retry_chain(scenario)
    for r in results:
        if chain is not None and r.wall_s > 0:
            lines.append(f"{r.name} wall / slowest retry chain: {r.wall_s / sum(chain):.2f}x")
    for r in results:
        done = r.ok + r.failed + r.skipped
        if r.wall_s > 0 and done and not r.ok:  # nothing fetched (manifest10m): per-row overhead
            lines.append(f"{r.name}: {done / r.wall_s:,.0f} rows/s, peak RSS {r.peak_rss_mb:.0f} MB")
    for ours, theirs in (("flowdc", "baseline"), ("flowdc_wds", "baseline_wds")):
        flowdc, baseline = by.get(ours), by.get(theirs)
        if flowdc and baseline:
            lines.append(f"{ours} / {theirs}, images/s (wall clock): "
                         f"{flowdc.wall_images_per_s / baseline.wall_images_per_s:.3f}x")
            lines += round_ratio_lines(flowdc, baseline)
    i2d = by.get("img2dataset")
    for name in [r.name for r in results if r.name not in ("bare", "img2dataset")]:
        r = by.get(name)
        if r and i2d:
            lines.append(f"{name} / img2dataset, images/s (wall clock): "
                         f"{r.wall_images_per_s / i2d.wall_images_per_s:.2f}x")
            if r.tool_images_per_s and i2d.tool_images_per_s:
                lines.append(f"{name} / img2dataset, images/s (as reported): "
                             f"{r.tool_images_per_s / i2d.tool_images_per_s:.2f}x")
    bare = by.get("bare")
    for name in [r.name for r in results if r.name != "bare"]:
        r = by.get(name)
        if r and bare:
            wall_ratio = r.wall_images_per_s / bare.wall_images_per_s
            lines.append(f"{name} / bare, images/s (wall clock): {wall_ratio:.2f}x")
            lines += round_ratio_lines(r, bare)
            if r.tool_images_per_s and bare.tool_images_per_s:
                tool_ratio = r.tool_images_per_s / bare.tool_images_per_s
                lines.append(f"{name} / bare, images/s (as reported): {tool_ratio:.2f}x")
            if r.cpu_s and bare.cpu_s:
                lines.append(f"{name} / bare, CPU per image: {r.cpu_s / r.ok / (bare.cpu_s / bare.ok):.2f}x "
                             f"({r.cpu_s / r.ok * 1e6:.0f} against {bare.cpu_s / bare.ok * 1e6:.0f} us)")
    return lines


def round_ratio_lines(ours: RunResult, theirs: RunResult) -> list[str]:
    """The same ratio taken round by round, and its median: the two ran minutes apart at most, so
    a slow stretch of a shared machine weighs on both sides of a round's ratio, not on one median."""
    pairs = [(a / b) for a, b in zip(ours.round_rates, theirs.round_rates, strict=False) if a > 0 and b > 0]
    if len(pairs) < 2:
        return []
    each = ", ".join(f"{x:.2f}" for x in pairs)
    return [f"{ours.name} / {theirs.name}, images/s round by round: median {statistics.median(pairs):.2f}x ({each})"]


def header_lines(scenario: Scenario, info: ManifestInfo, concurrency: int) -> list[str]:
    lines = [
        f"rows {info.rows}, hosts {len(scenario.hosts)}, concurrency {concurrency}, cores {os.cpu_count()}",
        f"outputs under {info.path.parent}",
    ]
    if info.rows_per_host:
        lines.append(f"rows per host: {list(info.rows_per_host)}")
    if info.ideal_makespan_s is not None:
        lines.append(f"ideal makespan: {info.ideal_makespan_s:.2f} s")
    if info.held_ideal_s is not None and info.held_ideal_s != info.ideal_makespan_s:
        lines.append(f"ideal with the holds a polite client must take (one Retry-After per host that only a "
                     f"refusal reveals): {info.held_ideal_s:.2f} s")
    if not scenario.synthetic:
        lines.append(f"rows that can succeed: {info.expected_ok}")
    chain = slowest_retry_chain(scenario)
    if chain is not None:
        hold, per_url = chain
        lines.append(f"slowest necessary retry chain: {hold + per_url:.2f} s "
                     f"(host hold {hold:.1f} s + per-URL chain {per_url:.2f} s)")
    return lines


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [list(COLUMNS), *rows]) for i in range(len(COLUMNS))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*r).rstrip() for r in [list(COLUMNS), *rows])


def markdown(scenario: Scenario, info: ManifestInfo, results: list[RunResult], concurrency: int) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = [_row(r, info) for r in results]
    out = [f"## {scenario.name} ({stamp})", "", scenario.about, ""]
    out += [f"- {line}" for line in header_lines(scenario, info, concurrency) + ratio_lines(scenario, results)
            + ends_lines(scenario, info, results)]
    out += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows]
    errors = {r.name: r.errors for r in results if r.errors}
    if errors:
        out += ["", "Errors by reason: " + json.dumps(errors, sort_keys=True)]
    return "\n".join(out) + "\n\n"


def report(scenario: Scenario, info: ManifestInfo, results: list[RunResult], concurrency: int) -> None:
    print()
    print(f"== {scenario.name}: " + "; ".join(header_lines(scenario, info, concurrency)))
    print(text_table([_row(r, info) for r in results]))
    for line in ratio_lines(scenario, results) + ends_lines(scenario, info, results):
        print(line)
    for r in results:
        if r.errors:
            print(f"{r.name} errors: {json.dumps(r.errors, sort_keys=True)}")
    RESULTS_MD.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS_MD.open("a", encoding="utf-8") as f:
        f.write(markdown(scenario, info, results, concurrency))
    print(f"(appended to {RESULTS_MD.relative_to(ROOT)})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="FLOW-DC benchmark against a bare aiohttp loop on fake hosts.")
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("--rows", type=int, default=0, help="Manifest rows (default: the scenario's).")
    p.add_argument("--out", default="",
                   help="Work directory (default: a temporary one on /dev/shm when it has room, removed after).")
    p.add_argument("--concurrency", type=int, default=0, help="Requests in flight, every contender.")
    p.add_argument("--only", default="", help=f"Comma list of contenders to run: {','.join(CONTENDERS)}.")
    p.add_argument("--timeout", type=float, default=0.0, help="Seconds before a contender run is killed.")
    p.add_argument("--keep", action="store_true", help="Keep downloaded outputs.")
    p.add_argument("--rounds", type=int, default=1,
                   help="Alternate the contenders this many times; report each one's best (or median) round.")
    p.add_argument("--pick", choices=("best", "median"), default="best",
                   help="Which round of several to report per contender.")
    p.add_argument("--baseline", default="", metavar="REV",
                   help="Also run this commit's flowdc (from a temporary git worktree) as contender 'baseline' "
                        "(and 'baseline_wds' where the scenario runs flowdc_wds).")
    args = p.parse_args(argv)
    unknown = set(filter(None, args.only.split(","))) - set(CONTENDERS)
    if unknown:
        p.error(f"unknown contender(s): {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scenario, info, results = run_benchmark(args)
    report(scenario, info, results, args.concurrency or scenario.concurrency)
    return 0


if __name__ == "__main__":
    sys.exit(main())

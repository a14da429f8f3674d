"""Distribute bench: does a second local worker process make a CPU-bound download faster?

Many open hosts (no rate limits, 2-4 ms each) serving realistic images (bench/realistic.py's
noise JPEGs of 9-45 KB, which the download's header check really reads), so the client's CPU, not the hosts, sets the
pace. The hosts run in a process of their own (bench/rawhosts.py: a bare asyncio server writing
prebuilt responses, so they take little of the CPU the client needs). The manifest is partitioned
by host, then `flowdc distribute --engine local` runs it with 1 worker and with 2 (fresh outputs
each time), `--rounds` times side by side; the report gives images/s, MB/s, CPU, the load average
and the ratio of the picked round (the median by default).

    .venv/bin/python bench/distribute_bench.py                      # 20,000 rows, 100 hosts, 8 partitions
    .venv/bin/python bench/distribute_bench.py --rounds 3 --pick median
    .venv/bin/python bench/distribute_bench.py --rows 40000 --workers 1,2,4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from rawhosts import responses, start_hosts
from realistic import noise_images

REPO = Path(__file__).resolve().parents[1]
IMAGE_POOL = 400  # distinct JPEGs, built once by the farm process; every URL stays distinct by its query


def serve_farm(hosts: int, latency_s: float, jitter_s: float, seed: int) -> None:
    """The farm process: start the hosts, print their base URLs and the pool's sizes as one JSON
    line, serve until stdin closes."""
    bodies = list(noise_images(IMAGE_POOL, seed=seed).values())

    async def main() -> None:
        farm = await start_hosts(hosts, responses(bodies), latency_s, jitter_s)
        print(json.dumps({"bases": [h.base_url for h in farm], "sizes": [len(b) for b in bodies]}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

    asyncio.run(main())


def write_manifest(path: Path, bases: list[str], sizes: list[int], rows: int, seed: int) -> int:
    from flowdc.testing.fakehosts import write_manifest as write

    rng = random.Random(seed)
    hosts = [i % len(bases) for i in range(rows)]
    rng.shuffle(hosts)  # interleaved, as in a real dataset
    urls, total = [], 0
    for i, h in enumerate(hosts):
        img = rng.randrange(len(sizes))
        urls.append(f"{bases[h]}/img/{img:04d}.jpg?r={i}")
        total += sizes[img]
    write(path, urls, labels=[f"class{i % 10}" for i in range(rows)])
    return total


def flowdc(*args: str, timeout_s: float = 1800.0) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "flowdc", *args], capture_output=True, text=True, env=env,
                          timeout=timeout_s, check=False)


def watched(*args: str, timeout_s: float = 1800.0) -> tuple[subprocess.CompletedProcess[str], tuple[float, float]]:
    """Run flowdc, and sum what its download tasks spent on a CPU and waiting for one (the kernel's
    schedstat per thread, sampled every 0.1 s). On a shared machine the time waiting in the run
    queue is CPU the task wanted and did not get: (on CPU + waiting) / wall is how many cores the
    download would have used alone, which load on other people's jobs cannot fake."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "flowdc", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    seen: dict[tuple[int, str], tuple[int, int]] = {}
    deadline = time.monotonic() + timeout_s
    root = psutil.Process(proc.pid)
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            tasks = [c.pid for c in root.children(recursive=True) if "flowdc.engines.task" in " ".join(c.cmdline())]
        except psutil.Error:
            tasks = []
        for pid in tasks:
            for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
                try:
                    on_cpu, waiting = (int(x) for x in stat.read_text().split()[:2])
                except (OSError, ValueError):
                    continue
                seen[(pid, stat.parent.name)] = (on_cpu, waiting)
        time.sleep(0.1)
    out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return result, (sum(c for c, _ in seen.values()) / 1e9, sum(w for _, w in seen.values()) / 1e9)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(parts: Path, out: Path, workers: int, rows: int, fmt: str, farm: psutil.Process) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    farm_cpu0 = sum(farm.cpu_times()[:2])
    cpu0, t0 = children_cpu(), time.monotonic()
    res, demand = watched("distribute", "--input", str(parts), "--output", str(out), "--engine", "local",
                          "--workers", str(workers), "--output_format", fmt, "--quiet", "--url_col", "url",
                          "--label_col", "label")
    wall, cpu = time.monotonic() - t0, children_cpu() - cpu0
    farm_cpu = sum(farm.cpu_times()[:2]) - farm_cpu0
    if res.returncode != 0:
        raise SystemExit(f"distribute failed ({res.returncode}):\n{res.stderr[-3000:]}")
    summary = json.loads((out / "_flowdc" / "distribute.json").read_text())
    ok = summary["totals"]["ok"]
    nbytes = sum(f.stat().st_size for f in out.rglob("*.tar")) if fmt == "webdataset" else sum(
        f.stat().st_size for f in out.rglob("*.jpg"))
    if ok != rows:
        raise SystemExit(f"only {ok}/{rows} rows stored with {workers} workers")
    return {"workers": workers, "wall_s": round(wall, 2), "images_per_s": round(ok / wall, 1),
            "mb_per_s": round(nbytes / wall / 1e6, 2), "client_cpu_s": round(cpu, 1), "farm_cpu_s": round(farm_cpu, 1),
            "task_cpu_s": round(demand[0], 1), "task_runq_wait_s": round(demand[1], 1),
            "task_cores_wanted": round(sum(demand) / wall, 2), "load_avg_1m": round(os.getloadavg()[0], 2)}


def report(rounds: list[list[dict[str, Any]]], pick: str) -> None:
    """Each round's ratio to its first worker count, and the median (or best) round's."""
    base_n = rounds[0][0]["workers"]
    for j, first in enumerate(rounds[0][1:], start=1):
        ratios = sorted(r[j]["images_per_s"] / r[0]["images_per_s"] for r in rounds)
        chosen = statistics.median_low(ratios) if pick == "median" else ratios[-1]
        loads = ", ".join(f"{r[j]['load_avg_1m']:.1f}" for r in rounds)
        wanted = ", ".join(f"{r[0]['task_cores_wanted']:.2f}/{r[j]['task_cores_wanted']:.2f}" for r in rounds)
        print(f"# {first['workers']} workers / {base_n}: {chosen:.2f}x images/s ({pick} of {len(ratios)} rounds: "
              f"{', '.join(f'{x:.2f}' for x in ratios)}; 1-min load after each: {loads}; cores the tasks wanted, "
              f"{base_n}/{first['workers']} workers: {wanted})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--hosts", type=int, default=100)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--workers", default="1,2", help="Comma list of local worker counts to compare.")
    p.add_argument("--latency", type=float, default=0.002, help="Host service time, seconds.")
    p.add_argument("--jitter", type=float, default=0.002, help="Extra uniform [0, jitter) per request, seconds.")
    p.add_argument("--rounds", type=int, default=1, help="Runs of every worker count, side by side.")
    p.add_argument("--pick", default="median", choices=("median", "best"),
                   help="Which round's ratio to report (per worker count, by images/s).")
    p.add_argument("--format", default="webdataset", choices=("webdataset", "imagefolder"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="", help="Work folder (default: a temporary one, removed after).")
    p.add_argument("--serve-farm", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not 1 <= args.hosts <= 250:
        p.error("--hosts must be 1-250 (127.0.0.2 - 127.0.0.251)")
    if args.serve_farm:
        serve_farm(args.hosts, args.latency, args.jitter, args.seed)
        return 0
    work = Path(args.out or tempfile.mkdtemp(prefix="flowdc-distbench-"))
    work.mkdir(parents=True, exist_ok=True)
    farm = subprocess.Popen([sys.executable, __file__, "--serve-farm", "--hosts", str(args.hosts), "--latency",
                             str(args.latency), "--jitter", str(args.jitter), "--seed", str(args.seed)],
                            stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert farm.stdout is not None
        hello = json.loads(farm.stdout.readline())
        total = write_manifest(work / "manifest.parquet", hello["bases"], hello["sizes"], args.rows, args.seed)
        res = flowdc("partition", "--input", str(work / "manifest.parquet"), "--output_folder", str(work / "parts"),
                     "--groups", str(args.partitions), "--method", "host", "--quiet")
        if res.returncode != 0:
            raise SystemExit(res.stderr)
        print(f"# {args.rows} rows, {args.hosts} hosts ({args.latency * 1000:.0f} ms + up to {args.jitter * 1000:.0f} "
              f"ms), {total / args.rows / 1000:.0f} KB mean image, {args.partitions} partitions, {args.format}, "
              f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at start", flush=True)
        counts = [int(x) for x in args.workers.split(",")]
        rounds: list[list[dict[str, Any]]] = []
        for i in range(args.rounds):
            rounds.append([])
            for n in counts:  # side by side in each round: a change in the machine's load hits all alike
                rounds[-1].append(run_once(work / "parts", work / f"out-{n}", n, args.rows, args.format,
                                           psutil.Process(farm.pid)))
                print(json.dumps({"round": i + 1, **rounds[-1][-1]}), flush=True)
        report(rounds, args.pick)
    finally:
        if farm.stdin:
            farm.stdin.close()
        try:
            farm.wait(15)
        except subprocess.TimeoutExpired:
            farm.kill()
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

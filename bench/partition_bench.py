"""Benchmark `flowdc partition --method host` on a synthetic long-tail manifest.

The manifest mimics real image datasets: a handful of big hosts (CDNs) hold half the rows and a
long tail of ~100k small hosts hold the rest. It is built with numpy/pyarrow in a few seconds,
then partitioned in a fresh child process so that its peak RSS (VmHWM) is the partition's own.

    .venv/bin/python bench/partition_bench.py                 # 10M rows, 20 groups, temp dir
    .venv/bin/python bench/partition_bench.py --rows 1000000 --keep /tmp/pb

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

BIG_HOST_WEIGHTS = (0.20, 0.12, 0.08, 0.06, 0.04)  # five hosts holding half the rows
CHUNK_ROWS = 1 << 20


def host_names(n_tail: int) -> pa.Array:
    big = [f"cdn{i}.bigphotos.example.com" for i in range(len(BIG_HOST_WEIGHTS))]
    tail = pc.binary_join_element_wise(
        "img.", pc.cast(pa.array(np.arange(n_tail)), pa.string()), ".tail-host.example.org", ""
    )
    return pa.concat_arrays([pa.array(big, pa.string()), tail])


def host_weights(n_tail: int) -> np.ndarray:
    """The tail follows a Zipf-like law, so a few tail hosts are sizeable and most are tiny."""
    tail = 1.0 / np.arange(1, n_tail + 1) ** 0.9
    tail *= (1.0 - sum(BIG_HOST_WEIGHTS)) / tail.sum()
    return np.concatenate([np.array(BIG_HOST_WEIGHTS), tail])


def make_manifest(path: Path, rows: int, n_tail: int, seed: int = 0) -> None:
    """Write the manifest with vectorised calls, a million rows at a time (memory stays flat)."""
    rng = np.random.default_rng(seed)
    names, weights = host_names(n_tail), host_weights(n_tail)
    with pq.ParquetWriter(path, manifest_schema(), compression="zstd") as writer:
        for start in range(0, rows, CHUNK_ROWS):
            ids = rng.choice(len(weights), size=min(CHUNK_ROWS, rows - start), p=weights)
            writer.write_table(manifest_chunk(names, ids, start, rng))


def manifest_schema() -> pa.Schema:
    return pa.schema([("url", pa.string()), ("label", pa.string()), ("photo_id", pa.int64())])


def manifest_chunk(names: pa.Array, ids: np.ndarray, start: int, rng: np.random.Generator) -> pa.Table:
    row_text = pc.cast(pa.array(np.arange(start, start + ids.size, dtype=np.int64)), pa.string())
    url = pc.binary_join_element_wise("https://", names.take(pa.array(ids)), "/photos/", row_text, ".jpg", "")
    label = pc.binary_join_element_wise("species_", pc.cast(pa.array(ids % 997), pa.string()), "")
    photo_id = pa.array(rng.integers(0, 1 << 40, ids.size))
    return pa.Table.from_arrays([url, label, photo_id], schema=manifest_schema())


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM starts afresh at exec; ru_maxrss may keep the forking parent's."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(manifest: str, out: str, groups: int, method: str) -> None:
    """Runs in a fresh process: partition, then report wall time, CPU time and this process's peak RSS."""
    from flowdc.config import PartitionConfig
    from flowdc.partition import run_partition

    rss_before = peak_rss_mb()
    start, cpu_start = time.perf_counter(), time.process_time()
    cfg = PartitionConfig(
        input=manifest, groups=groups, output_folder=out, method=method, group_col="label", seed=0, quiet=True
    )
    plan = run_partition(cfg, progress=False)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    sizes = [p["rows"] for p in plan["partitions"]]
    result = {
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu, 2),  # user + system over all threads: steadier on a busy machine
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_after_imports_mb": round(rss_before, 1),
        "largest_partition": max(sizes),
        "smallest_partition": min(sizes),
        "split_hosts": plan["split_hosts_total"],
        "max_hosts_in_partition": max(p["hosts"] for p in plan["partitions"]),
    }
    print(json.dumps(result))


def run_child(args: argparse.Namespace, manifest: Path, work: Path) -> dict[str, float]:
    out = work / "partitions"
    cmd = [sys.executable, __file__, "--groups", str(args.groups), "--method", args.method]
    cmd += ["--child", str(manifest), str(out)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--tail_hosts", type=int, default=100_000)
    ap.add_argument("--groups", type=int, default=20)
    ap.add_argument("--method", default="host", choices=("host", "simple", "greedy"))
    ap.add_argument("--repeat", type=int, default=1, help="Partition this many times; report the fastest.")
    ap.add_argument("--keep", help="Work in this folder and keep the manifest and partitions.")
    ap.add_argument("--reuse", action="store_true", help="With --keep: use the manifest already there.")
    ap.add_argument("--child", nargs=2, metavar=("MANIFEST", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.groups, args.method)
        return
    with tempfile.TemporaryDirectory(prefix="partition-bench-") as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        manifest = work / "manifest.parquet"
        start = time.perf_counter()
        if not (args.reuse and manifest.exists()):
            make_manifest(manifest, args.rows, args.tail_hosts)
        generated = time.perf_counter() - start
        runs = [run_child(args, manifest, work) for _ in range(max(1, args.repeat))]
        best = min(runs, key=lambda r: r["seconds"])
        rows = pq.ParquetFile(manifest).metadata.num_rows
        head = {"rows": rows, "groups": args.groups, "method": args.method, "generate_seconds": round(generated, 2)}
        print(json.dumps({**head, **best, "all_seconds": [r["seconds"] for r in runs]}))


if __name__ == "__main__":
    main()

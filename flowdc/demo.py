"""`flowdc demo`: sample image hosts on loopback with different characters, and a download from them.

The hosts listen on a fixed port by default (--hosts_port), so running the demo again resumes the
same output (nothing is fetched twice); delete the demo folder to start afresh. Two demos at once
need different ports (--hosts_port 0 picks a free one).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from pathlib import Path

from flowdc.config import DownloadConfig
from flowdc.errors import ConfigError
from flowdc.testing.fakehosts import FakeHostFarm, HostSpec, run_farm_in_thread, write_manifest

DEMO_PORT = 18765
SPECIES = ("Apis mellifera", "Bombus terrestris", "Danaus plexippus", "Vanessa cardui", "Papilio machaon")


def demo_hosts(port: int = DEMO_PORT) -> list[HostSpec]:
    return [
        HostSpec("127.0.0.2", port, latency_s=0.005, name="fast-cdn"),
        HostSpec("127.0.0.3", port, latency_s=0.040, capacity=8, name="small-museum (8 parallel slots)"),
        HostSpec("127.0.0.4", port, latency_s=0.020, hard_cap=6, retry_after_s=1, name="strict-api (429 above 6)"),
        HostSpec("127.0.0.5", port, latency_s=0.010, rate_per_s=150, burst=20, retry_after_s=1,
                 name="rate-limited (150 req/s)"),
        HostSpec("127.0.0.6", port, latency_s=0.015, fault_rate=0.05, faults=("503", "reset", "truncate"), seed=7,
                 name="flaky (5% faults)"),
    ]


def write_demo_manifest(path: str | Path, farm: FakeHostFarm, rows: int) -> Path:
    """The sample manifest: `rows` images spread over the farm's hosts, with a species label, a
    license and a stable `id` (the hosts' ports may change from run to run; the ids do not)."""
    rng = random.Random(42)
    urls = [farm.url(i % len(farm.hosts), f"/images/{i:06d}.png") for i in range(rows)]
    labels = [rng.choice(SPECIES) for _ in range(rows)]
    licenses = [rng.choice(("CC0", "CC-BY", "CC-BY-NC")) for _ in range(rows)]
    return write_manifest(path, urls, labels, {"license": licenses, "id": [f"img-{i:06d}" for i in range(rows)]})


@contextlib.contextmanager
def demo_run(out: str, rows: int = 2000, quiet: bool = False, output_format: str = "webdataset",
             hosts_port: int = DEMO_PORT) -> Iterator[tuple[DownloadConfig, list[str]]]:
    """The sample hosts up, the demo manifest written: yields the download's config and the hosts'
    descriptions, and stops the hosts afterwards. hosts_port 0 picks a free port."""
    if rows < 1:
        raise ConfigError("--rows must be >= 1")
    folder = Path(out).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    specs = demo_hosts(hosts_port)
    try:
        farm_cm = run_farm_in_thread(specs)
        farm = farm_cm.__enter__()
    except OSError as exc:
        raise ConfigError(f"cannot start the demo hosts on port {hosts_port}: {exc} (give another --hosts_port, "
                          "or 0 for a free one)") from None
    try:
        manifest = write_demo_manifest(folder / "manifest.parquet", farm, rows)
        cfg = DownloadConfig(input=str(manifest), output=str(folder / f"output-{output_format}"), label="label",
                             output_format=output_format, concurrent_downloads=256, timeout=10,
                             retry_backoff_sec=0.5, samples_per_shard=500, create_tar=False,
                             telemetry=str(folder / "telemetry.jsonl"), quiet=quiet)
        cfg.check()
        yield cfg, [f"  {host.base_url:28s} {spec.name}" for host, spec in zip(farm.hosts, specs, strict=True)]
    finally:
        farm_cm.__exit__(None, None, None)


def run_demo(out: str, rows: int = 2000, quiet: bool = False, output_format: str = "webdataset",
             hosts_port: int = DEMO_PORT) -> int:
    from flowdc.download import run_download
    from flowdc.overview import summary_text

    with demo_run(out, rows, quiet, output_format, hosts_port) as (cfg, hosts):
        print("flowdc demo: hosts on loopback:", *hosts, sep="\n")
        overview = run_download(cfg)
    output = Path(cfg.output)
    print(summary_text(overview, str(output)))
    print(f"  manifest:  {cfg.input}\n  overview:  {output / 'overview.json'}\n  ledger:    {output / '_flowdc/ledger'}"
          f"\n  telemetry: {cfg.telemetry}  (plot it: flowdc report {cfg.telemetry})")
    return 0

"""Benchmark scenarios as data, and the manifests they produce.

A scenario names its fake hosts, how its rows spread over them, which scripted faults some rows
carry, and the options each contender runs with. Rows are spread over hosts in a seeded shuffle,
so the manifest interleaves hosts the way a real dataset does (a sorted one would hide
head-of-line blocking).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from img2dataset_contender import Img2datasetSettings
from realistic import CTYPES, format_of, image_path

from flowdc.testing.fakehosts import HostSpec, parse_fault, write_manifest


@dataclass(frozen=True)
class Scenario:
    name: str
    about: str
    rows: int
    hosts: tuple[HostSpec, ...] = ()
    balance: str = "even"  # "even" rows per host, or "rate": rows proportional to host throughput
    faults: tuple[tuple[str, float], ...] = ()  # (query string, share of rows that carry it)
    flowdc_args: tuple[str, ...] = ()
    bare_args: tuple[str, ...] = ()
    concurrency: int = 256
    compare_no_paarc: bool = False  # also run flowdc with --disable_paarc
    run_bare: bool = True
    timeout_s: float = 600.0  # per contender run
    synthetic: bool = False  # rows need no network (manifest10m): no farm is started
    # When set, rows cycle over this many image paths (each URL stays distinct by its query), so
    # the hosts generate few large images and serve them from memory.
    distinct_images: int = 0
    # Realistic bodies (bench/realistic.py): a format mix such as (("jpeg", 1.0),); the hosts serve
    # `rows` images built once and cached, row i the image i (cycled beyond `rows`).
    images: tuple[tuple[str, float], ...] = ()
    image_style: str = "noise"  # realistic.STYLES: noise, or photo (smooth, 160x120 to 640x480)
    # flowdc's runs: (contender name, its options); the first is "flowdc" (baseline and
    # flowdc_nopaarc run with its options). By default webdataset without the archive.
    flowdc_runs: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("flowdc", ("--output_format", "webdataset", "--no_create_tar")),
    )
    seed: int = 0
    # img2dataset's options for contender img2dataset (thread_count and number_sample_per_shard are
    # set by the bench from --concurrency and the rows); None: img2dataset_settings() derives them
    # from flowdc_args, bytes kept as served. When set, img2dataset runs without being named in
    # --only, and with a resize_mode flowdc's outputs are checked against the same resize rule
    # (give flowdc the same work: flowdc_resize_args).
    img2dataset: Img2datasetSettings | None = None


@dataclass(frozen=True)
class ManifestInfo:
    path: Path
    rows: int
    rows_per_host: tuple[int, ...]
    ideal_makespan_s: float | None  # None when some host has no limit
    expected_ok: int
    held_ideal_s: float | None = None  # the ideal with the holds a polite client must take (host_hold)


# -- host arithmetic ----------------------------------------------------------------------------


def service_time(spec: HostSpec) -> float:
    return spec.latency_s + spec.jitter_s / 2  # jitter is uniform [0, jitter_s)


def host_rate(spec: HostSpec) -> float | None:
    """Requests per second the host sustains without a 429; None when it has no limit."""
    slots = min(x for x in (spec.capacity, spec.hard_cap, math.inf) if x is not None)
    rates = [spec.rate_per_s or math.inf, spec.window_quota / spec.window_s if spec.window_quota else math.inf]
    if service_time(spec) > 0:
        rates.append(slots / service_time(spec))
    rate = min(rates)
    return None if math.isinf(rate) else rate


def host_makespan(spec: HostSpec, rows: int) -> float | None:
    """Least time to serve `rows` requests when the client keeps the host exactly full."""
    rate = host_rate(spec)
    if rate is None:
        return None
    free = min(rows, spec.burst) if spec.rate_per_s else 0  # a full bucket serves a burst at once
    if spec.window_quota:
        free = min(rows, spec.window_quota)  # so does a fresh window
    return (rows - free) / rate + service_time(spec)


def host_hold(spec: HostSpec) -> float:
    """Seconds of Retry-After hold a polite client must take at this host, however well it behaves.

    A token bucket, or a hard cap with no queue in front of it, shows its limit by nothing but a
    refusal: no latency rises before it. Finding it costs one refusal and so one hold (a bucket
    answers Retry-After with its refill wait, rounded up to whole seconds). A cap behind a queue
    (capacity under the cap) shows as latency first, and a client that keeps the queue short never
    meets it.
    """
    if spec.rate_per_s:
        return spec.retry_after_s if spec.retry_after_s is not None else math.ceil(1.0 / spec.rate_per_s)
    if spec.window_quota and not spec.announce_quota:
        return spec.window_s  # a quota that says nothing is found by a refusal: up to a window's wait
    if spec.hard_cap is not None and (spec.capacity is None or spec.capacity >= spec.hard_cap):
        return spec.retry_after_s or 0.0
    return 0.0


def split_rows(scenario: Scenario, rows: int) -> list[int]:
    """Rows per host, summing to `rows`."""
    if scenario.balance == "rate":
        weights = [host_rate(h) or 0.0 for h in scenario.hosts]
        if not all(weights):
            raise ValueError(f"{scenario.name}: balance='rate' needs a rate limit on every host")
    else:
        weights = [1.0] * len(scenario.hosts)
    total = sum(weights)
    counts = [int(rows * w / total) for w in weights]
    for i in range(rows - sum(counts)):  # hand out the rounding remainder
        counts[i % len(counts)] += 1
    return counts


def ideal_makespan(scenario: Scenario, counts: list[int], holds: bool = False) -> float | None:
    """The least makespan with every host kept exactly full; with `holds`, each host also waits out
    the one Retry-After hold that finding its limit costs a polite client (host_hold)."""
    spans = [host_makespan(h, n) for h, n in zip(scenario.hosts, counts, strict=True) if n]
    if not spans or any(s is None for s in spans):
        return None
    held = [h for h, n in zip(scenario.hosts, counts, strict=True) if n]
    return max(s + (host_hold(h) if holds else 0.0) for s, h in zip(spans, held, strict=True) if s is not None)


def fails_for_good(query: str) -> bool:
    """True when the scripted fault never clears (no xN count), so the row cannot succeed."""
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if key == "fail":
            fault = parse_fault(value)
            return fault is not None and fault.times is None
    return False


def answers_nothing(spec: HostSpec) -> bool:
    """Every request stalls (past any timeout the bench gives) or has its connection reset: none of
    the host's rows can succeed."""
    return spec.fault_rate >= 1.0 and tuple(spec.faults) in (("stall",), ("reset",))


def _flowdc_option(scenario: Scenario, name: str, default: float) -> float:
    args = list(scenario.flowdc_args)
    return float(args[args.index(name) + 1]) if name in args else default


def img2dataset_settings(scenario: Scenario, rows: int, concurrency: int) -> Img2datasetSettings:
    """The scenario's img2dataset options with the bench's concurrency spread over its processes,
    and two shards per process at least (img2dataset runs one shard per process)."""
    base = scenario.img2dataset or Img2datasetSettings(
        disable_all_reencoding=True,
        timeout=_flowdc_option(scenario, "--timeout", 30.0),
        retries=int(_flowdc_option(scenario, "--max_retry_attempts", 3)),
    )
    procs = base.processes_count
    return replace(base, thread_count=max(1, concurrency // procs),
                   number_sample_per_shard=max(1, math.ceil(rows / (2 * procs))))


def flowdc_resize_args(s: Img2datasetSettings) -> tuple[str, ...]:
    """flowdc's options for the resizing img2dataset's settings ask for: the same work on both sides."""
    args = ("--image_size", str(s.image_size), "--resize_mode", s.resize_mode, "--encode_format", s.encode_format,
            "--encode_quality", str(s.encode_quality), "--processes_count", str(s.processes_count))
    return (*args, "--resize_only_if_bigger") if s.resize_only_if_bigger else args


def slowest_retry_chain(scenario: Scenario) -> tuple[float, float] | None:
    """(host hold, per-URL chain) in seconds, for the slowest row that can still succeed.

    A row's chain is its failed attempts (a stall costs the request timeout) and the longest
    backoffs flowdc may draw between them (retry_backoff_sec x 2^k x 1.5), or the Retry-After
    when longer. The host hold is the longest Retry-After a scripted 429 carries: flowdc holds the
    host on a host's first refusal, so a row queued behind it starts that much later.
    """
    timeout = _flowdc_option(scenario, "--timeout", 30.0)
    backoff = _flowdc_option(scenario, "--retry_backoff_sec", 1.0)
    hold = chain = 0.0
    for query, _share in scenario.faults:
        params = dict(part.partition("=")[::2] for part in query.split("&"))
        fault = parse_fault(params.get("fail", ""))
        if fault is None or fault.times is None:
            continue
        retry_after = float(params.get("retry_after", 0) or 0)
        if fault.kind == "429":
            hold = max(hold, retry_after)
        spent = 0.0
        for k in range(fault.times):
            attempt = timeout if fault.kind == "stall" else 0.0
            spent += attempt + max(backoff * 2**k * 1.5, retry_after)
        chain = max(chain, spent)
    return (hold, chain) if chain else None


# -- manifests ----------------------------------------------------------------------------------


def build_urls(scenario: Scenario, base_urls: list[str], rows: int) -> tuple[list[str], list[int], int]:
    """(urls, rows per host, rows that can succeed)."""
    rng = random.Random(scenario.seed)
    counts = split_rows(scenario, rows)
    hosts = [i for i, n in enumerate(counts) for _ in range(n)]
    rng.shuffle(hosts)
    queries = [""] * rows
    order = list(range(rows))
    rng.shuffle(order)
    cursor = 0
    for query, share in scenario.faults:
        n = round(rows * share)
        for row in order[cursor : cursor + n]:
            queries[row] = query
        cursor += n
    if scenario.images:
        return realistic_urls(scenario, base_urls, hosts), counts, rows
    if scenario.distinct_images:
        queries = [f"row={i}" + (f"&{q}" if q else "") for i, q in enumerate(queries)]
    urls = [
        f"{base_urls[h]}/img/{i % (scenario.distinct_images or rows):08d}.png" + (f"?{q}" if q else "")
        for i, (h, q) in enumerate(zip(hosts, queries, strict=True))
    ]
    silent = {i for i, spec in enumerate(scenario.hosts) if answers_nothing(spec)}
    expected_ok = sum(1 for h, q in zip(hosts, queries, strict=True) if h not in silent and not fails_for_good(q))
    return urls, counts, expected_ok


def realistic_urls(scenario: Scenario, base_urls: list[str], hosts: list[int]) -> list[str]:
    """Row i asks for image i of the prebuilt set (its Content-Type in ?ctype=, as a real host sends)."""
    urls = []
    for i, h in enumerate(hosts):
        image = i % scenario.rows
        fmt = format_of(image, scenario.images)
        again = f"&row={i}" if i >= scenario.rows else ""  # a repeat of an image keeps a URL of its own
        urls.append(f"{base_urls[h]}{image_path(image, fmt)}?ctype={CTYPES[fmt]}{again}")
    return urls


def write_scenario_manifest(scenario: Scenario, base_urls: list[str], path: Path, rows: int) -> ManifestInfo:
    urls, counts, expected_ok = build_urls(scenario, base_urls, rows)
    labels = [f"class_{i % 10}" for i in range(rows)]
    write_manifest(path, urls, labels=labels)
    return ManifestInfo(path, rows, tuple(counts), ideal_makespan(scenario, counts), expected_ok,
                        ideal_makespan(scenario, counts, holds=True))


def write_synthetic_manifest(path: Path, rows: int, batch_rows: int = 1_000_000) -> ManifestInfo:
    """Rows that need no network: ftp:// URLs on 1000 never-resolving hosts, written in batches.

    The downloader rejects the scheme per row, so this measures manifest streaming, per-row
    bookkeeping and memory, not fetching.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("url", pa.string()), ("label", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, batch_rows):
            idx = pa.array(range(start, min(rows, start + batch_rows)), pa.int64())
            host = pc.cast(pc.bit_wise_and(idx, 1023), pa.string())
            url = pc.binary_join_element_wise(
                "ftp://mirror", host, ".invalid/img/", pc.cast(idx, pa.string()), ".jpg", ""
            )
            label = pc.binary_join_element_wise("class_", pc.cast(pc.bit_wise_and(idx, 15), pa.string()), "")
            writer.write_table(pa.table({"url": url, "label": label}, schema=schema))
    return ManifestInfo(path, rows, (), None, 0)


# -- the scenarios ------------------------------------------------------------------------------


def _ips(n: int) -> list[str]:
    return [f"127.0.0.{i + 2}" for i in range(n)]


UNTHROTTLED = Scenario(
    name="unthrottled",
    about="20k small images over 4 hosts with no limits: raw throughput on this machine.",
    rows=20_000,
    hosts=tuple(HostSpec(ip, image_bytes=2048, name=f"open{i}") for i, ip in enumerate(_ips(4))),
    flowdc_args=("--timeout", "30"),
    bare_args=("--timeout", "30"),
    concurrency=256,
)

LARGE = Scenario(
    name="large",
    about="3,000 images of 256 KiB over 4 hosts with no limits (750 MiB): MB/s at real image sizes.",
    rows=3_000,
    hosts=tuple(HostSpec(ip, image_bytes=256 * 1024, name=f"open{i}") for i, ip in enumerate(_ips(4))),
    distinct_images=64,
    flowdc_args=("--timeout", "30"),
    bare_args=("--timeout", "30"),
    concurrency=64,
)

FAULTS = Scenario(
    name="faults",
    about="Scripted per-URL faults on 4 hosts; every row except the 404s can succeed.",
    rows=2_000,
    hosts=tuple(HostSpec(ip, stall_s=30.0, name=f"faulty{i}") for i, ip in enumerate(_ips(4))),
    faults=(
        ("fail=503x2", 0.05),
        ("fail=500x1", 0.02),
        ("fail=truncatex1", 0.03),
        ("fail=resetx2", 0.03),  # x2: aiohttp silently resends once after a reset
        ("fail=404", 0.02),
        ("fail=stallx1", 0.01),
        ("fail=429x1&retry_after=2", 0.03),
        ("fail=429x1&retry_after=1&retry_after_date=1", 0.01),
        ("redirect=2", 0.02),
        ("nolength=1", 0.02),
    ),
    flowdc_args=("--timeout", "3", "--max_retry_attempts", "3", "--retry_backoff_sec", "0.5"),
    bare_args=("--timeout", "3", "--retries", "3", "--backoff", "0.5"),
    concurrency=128,
    timeout_s=300.0,
)

DEAD_HOSTS = Scenario(
    name="dead_hosts",
    about=(
        "4 open hosts (5 ms) and 2 silent ones that accept connections and never answer, 3,000 rows spread "
        "evenly, 5-s timeout: a third of the rows cannot succeed, and what counts is when the run ends."
    ),
    rows=3_000,
    hosts=(
        *(HostSpec(ip, latency_s=0.005, name=f"open{i}") for i, ip in enumerate(_ips(4))),
        *(HostSpec(ip, fault_rate=1.0, faults=("stall",), stall_s=60.0, name=f"silent{i}")
          for i, ip in enumerate(_ips(6)[4:])),
    ),
    flowdc_args=("--timeout", "5"),  # the default 3 retries and host_down_after 60 s
    bare_args=("--timeout", "5", "--retries", "3", "--backoff", "2"),  # flowdc's default retries and backoff
    concurrency=256,
    timeout_s=400.0,
)

RESET_HOSTS = Scenario(
    name="reset_hosts",
    about=(
        "4 open hosts (5 ms) and 2 that reset every connection (a firewall's RST, a server going down), "
        "6,000 rows spread evenly: a third of the rows cannot succeed, and their failures come at once. "
        "What counts is how often the resetting hosts are asked, the CPU it takes and when the run ends."
    ),
    rows=6_000,
    hosts=(
        *(HostSpec(ip, latency_s=0.005, name=f"open{i}") for i, ip in enumerate(_ips(4))),
        *(HostSpec(ip, fault_rate=1.0, faults=("reset",), name=f"reset{i}") for i, ip in enumerate(_ips(6)[4:])),
    ),
    flowdc_args=("--timeout", "5"),  # the default 3 retries and host_down_after 60 s
    bare_args=("--timeout", "5", "--retries", "3", "--backoff", "2"),  # flowdc's default retries and backoff
    concurrency=256,
    timeout_s=400.0,
)

_POLITE_HOSTS = (
    HostSpec("127.0.0.2", name="queue8", capacity=8, latency_s=0.05),
    HostSpec("127.0.0.3", name="queue16-slow", capacity=16, latency_s=0.1, jitter_s=0.02, seed=3),
    HostSpec("127.0.0.4", name="cap12", hard_cap=12, latency_s=0.04, retry_after_s=1.0),
    HostSpec("127.0.0.5", name="queue8-cap24", capacity=8, hard_cap=24, latency_s=0.03, retry_after_s=2.0),
    HostSpec("127.0.0.6", name="bucket100", rate_per_s=100.0, burst=10, latency_s=0.01),
    HostSpec("127.0.0.7", name="queue32", capacity=32, latency_s=0.1),
)

POLITE = Scenario(
    name="polite",
    about=(
        "6 hosts that push back: FIFO queues (latency inflates), hard caps answering 429 with "
        "Retry-After, a 100/s token bucket. Rows are spread in proportion to each host's throughput, "
        "so the ideal makespan needs every host kept exactly full at once."
    ),
    rows=12_000,
    hosts=_POLITE_HOSTS,
    balance="rate",
    flowdc_args=("--timeout", "30"),
    bare_args=("--timeout", "30", "--retries", "5", "--backoff", "1.0"),
    concurrency=256,
    compare_no_paarc=True,
)

QUOTA = Scenario(
    name="quota",
    about=(
        "4 hosts allowing 50 requests a second each in fixed windows (429 with Retry-After past it). "
        "Two announce the quota on every reply (X-RateLimit-* with a Unix time, RateLimit-* in "
        "seconds), two say nothing. A client that reads the announcement is refused nothing there."
    ),
    rows=2_000,
    hosts=(
        HostSpec("127.0.0.2", name="quota50-x", window_quota=50, latency_s=0.02, announce_quota="x"),
        HostSpec("127.0.0.3", name="quota50-ietf", window_quota=50, latency_s=0.02, announce_quota="ietf"),
        HostSpec("127.0.0.4", name="quota50-silent", window_quota=50, latency_s=0.02),
        HostSpec("127.0.0.5", name="quota50-silent2", window_quota=50, latency_s=0.02),
    ),
    balance="rate",
    flowdc_args=("--timeout", "30"),
    bare_args=("--timeout", "30", "--retries", "5", "--backoff", "1.0"),
    concurrency=256,
)

POLITE_LONG = replace(
    POLITE,
    name="polite_long",
    about=(
        "The polite hosts with 5x the rows (ideal makespan ~47 s): long enough that learning each "
        "host (the Retry-After holds it costs) weighs little against the steady state. PAARC's "
        "acceptance (1.15x the ideal, <= 1% 429s) is measured here."
    ),
    rows=60_000,
    timeout_s=900.0,  # --disable_paarc takes about 9x the ideal (7 min)
)

SPREAD = Scenario(
    name="spread",
    about=(
        "4 queue hosts whose latency spreads widely (uniform, p95 4-7x p10), as a cache that misses "
        "or a busy origin shows: the spread alone must not read as a queue. Rows spread by throughput."
    ),
    rows=10_000,
    hosts=(
        HostSpec("127.0.0.2", name="queue6-wide", capacity=6, latency_s=0.005, jitter_s=0.06, seed=1),
        HostSpec("127.0.0.3", name="queue16-wide", capacity=16, latency_s=0.01, jitter_s=0.14, seed=2),
        HostSpec("127.0.0.4", name="queue48-wide", capacity=48, latency_s=0.02, jitter_s=0.2, seed=3),
        HostSpec("127.0.0.5", name="queue100-wide", capacity=100, latency_s=0.05, jitter_s=0.3, seed=4),
    ),
    balance="rate",
    flowdc_args=("--timeout", "30"),
    bare_args=("--timeout", "30"),
    concurrency=256,
)


def _many_hosts() -> tuple[HostSpec, ...]:
    """A long tail of small hosts: most are slow queues, some refuse past a cap, some count by rate."""
    hosts = []
    for i, ip in enumerate(_ips(100)):
        if i % 5 < 3:
            hosts.append(HostSpec(ip, name=f"queue4-{i}", capacity=4, latency_s=0.15, jitter_s=0.1, seed=i))
        elif i % 5 == 3:
            hosts.append(HostSpec(ip, name=f"cap3-{i}", hard_cap=3, latency_s=0.1, retry_after_s=1.0))
        else:
            hosts.append(HostSpec(ip, name=f"bucket10-{i}", rate_per_s=10.0, burst=2, latency_s=0.02))
    return tuple(hosts)


MANY_HOSTS = Scenario(
    name="many_hosts",
    about=(
        "100 small hosts: 60 slow 4-slot queues, 20 hard caps at 3 (429, Retry-After 1), 20 token "
        "buckets of 10/s. Rows spread by throughput: every host must be learned at once."
    ),
    rows=40_000,
    hosts=_many_hosts(),
    balance="rate",
    flowdc_args=("--timeout", "30"),
    bare_args=("--timeout", "30", "--retries", "5", "--backoff", "1.0"),
    concurrency=512,
    timeout_s=900.0,
)

REALISTIC = Scenario(
    name="realistic",
    about=(
        "20k noise JPEGs of 96x96 to 256x192 px (about 9-45 KB, 24 KB mean) on 4 open hosts with 5 ms latency: "
        "flowdc with its defaults (imagefolder plus the archive) and with webdataset, beside the bare loop."
    ),
    rows=20_000,
    hosts=tuple(HostSpec(ip, latency_s=0.005, name=f"open{i}") for i, ip in enumerate(_ips(4))),
    images=(("jpeg", 1.0),),
    flowdc_runs=(("flowdc", ()), ("flowdc_wds", ("--output_format", "webdataset"))),
    flowdc_args=("--timeout", "30"),
    bare_args=("--timeout", "30"),
    concurrency=256,
    compare_no_paarc=True,  # the defaults with a fixed limit: what PAARC's holding back costs here
)

REALISTIC_MIX = replace(
    REALISTIC,
    name="realistic_mix",
    about="The realistic scenario with 80% JPEG, 10% PNG (larger: PNG keeps noise whole) and 10% WebP.",
    images=(("jpeg", 0.8), ("png", 0.1), ("webp", 0.1)),
)


def _queue_tail() -> tuple[HostSpec, ...]:
    """A few queueing hosts that bind the makespan, beside a long tail of small slow ones; no rate limits.

    The hard caps sit well above each host's slots: a client that keeps a host at its capacity never
    meets them, one that overshoots by far does.
    """
    hosts = [
        HostSpec("127.0.0.2", name="queue32", capacity=32, latency_s=0.08, jitter_s=0.04, seed=1),
        HostSpec("127.0.0.3", name="queue32-slow", capacity=32, latency_s=0.3, seed=2),
        HostSpec("127.0.0.4", name="queue16-cap32", capacity=16, hard_cap=32, latency_s=0.08,
                 retry_after_s=1.0, seed=3),
        HostSpec("127.0.0.5", name="queue24-cap48", capacity=24, hard_cap=48, latency_s=0.12, jitter_s=0.04,
                 retry_after_s=1.0, seed=4),
    ]
    for i, ip in enumerate(_ips(44)[4:]):
        if i % 4 == 3:
            hosts.append(HostSpec(ip, name=f"queue2-cap6-{i}", capacity=2, hard_cap=6, latency_s=0.4,
                                  retry_after_s=1.0, seed=10 + i))
        else:
            hosts.append(HostSpec(ip, name=f"queue4-{i}", capacity=4, latency_s=0.3, jitter_s=0.2, seed=10 + i))
    return tuple(hosts)


QUEUE_TAIL = Scenario(
    name="queue_tail",
    about=(
        "4 queueing hosts (16-32 slots, two with hard caps far above them) and a long tail of 40 small "
        "slow queues (2-4 slots, 300-500 ms), no rate limits; rows spread by throughput, ideal ~10 s: "
        "the ramp to each host's capacity and any probe under it show in the makespan."
    ),
    rows=10_000,
    hosts=_queue_tail(),
    balance="rate",
    flowdc_args=("--timeout", "30"),
    bare_args=("--timeout", "30", "--retries", "5", "--backoff", "1.0"),
    concurrency=1000,  # flowdc's default: 40 slow hosts at C_init hold 320 requests
    timeout_s=300.0,
)

_RESIZE_TO_256 = Img2datasetSettings(output_format="webdataset", processes_count=2, image_size=256,
                                     resize_mode="keep_ratio", encode_format="jpg", timeout=30.0, retries=3)

RESIZE = Scenario(
    name="resize",
    about=(
        "3,000 photo-like JPEGs (160x120 to 640x480 px, 4-60 KB) on 4 open hosts with 5 ms latency, resized so the "
        "smaller side is 256 (keep_ratio) and re-encoded as JPEG (quality 95) by 2 processes, as webdataset: "
        "flowdc against img2dataset 1.47 with the same settings. CPU-bound: resizing is the work."
    ),
    rows=3_000,
    hosts=tuple(HostSpec(ip, latency_s=0.005, name=f"open{i}") for i, ip in enumerate(_ips(4))),
    images=(("jpeg", 1.0),),
    image_style="photo",
    flowdc_runs=(
        ("flowdc", ("--output_format", "webdataset", "--no_create_tar", "--label", "label",
                    *flowdc_resize_args(_RESIZE_TO_256))),
    ),
    img2dataset=_RESIZE_TO_256,
    flowdc_args=("--timeout", "30"),
    run_bare=False,  # it does not resize: no comparison
    concurrency=64,
    timeout_s=300.0,
)

MANIFEST10M = Scenario(
    name="manifest10m",
    about="10M rows with ftp:// URLs (rejected per row, no network): memory and per-row overhead.",
    rows=10_000_000,
    synthetic=True,
    run_bare=False,
    flowdc_args=("--max_retry_attempts", "0"),
    concurrency=256,
    timeout_s=1800.0,
)

SCENARIOS: dict[str, Scenario] = {
    s.name: s for s in (UNTHROTTLED, LARGE, FAULTS, DEAD_HOSTS, RESET_HOSTS, POLITE, POLITE_LONG, QUOTA, SPREAD,
                        MANY_HOSTS, QUEUE_TAIL, REALISTIC, REALISTIC_MIX, RESIZE, MANIFEST10M)
}

"""`flowdc size`: how many bytes a manifest will download, from HEAD / Range requests.

Each URL is asked for its size without downloading it: a HEAD first; when the host refuses HEAD
(405/501/403) or gives no Content-Length, a `Range: bytes=0-0` GET whose Content-Range carries the
total; when that host ignores the Range and starts a 200, its Content-Length is taken and the
connection closed before the body. Requests go through the same Scheduler and per-host policies
(PAARC or a fixed limit) as downloads, so sizing a manifest is as polite as downloading it.

With `--sample N` only N rows, drawn uniformly at random (reservoir sampling over the streamed
batches, so the manifest is never held in memory), are asked, and the total is extrapolated with
a 95% confidence interval. URLs that give no size are reported as unresolved, never as size 0.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import logging
import math
import os
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pyarrow as pa
from tqdm import tqdm

from flowdc.config import SizeConfig, public_dict
from flowdc.errors import ConfigError, DestinationError
from flowdc.fetch import Outcome, exchange, status_outcome
from flowdc.localfiles import write_local
from flowdc.loops import run_sync
from flowdc.manifest import FORMATS_HELP, Manifest, as_text, is_manifest_name
from flowdc.politeness import disallowed_directive
from flowdc.requestloop import RequestLoop
from flowdc.scheduler import Job
from flowdc.signals import Signal
from flowdc.urls import host_key, scheme_error, url_redactor

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # per row, counting the first; like the downloader's retry budget
RETRY_BACKOFF_S = 0.5  # base delay before a retry, doubled per attempt; a Retry-After wins if longer
HEAD_FALLBACK_STATUSES = frozenset({403, 405, 501})  # 403: signed URLs are often signed for GET only
SMALL_BODY = 64 * 1024  # error bodies up to this are read so the connection can be reused
QUANTILE_CAP = 1_000_000  # sizes kept for median/p95; exact below this, a uniform subsample above
HOSTS_LISTED = 1000  # per-host rows in the JSON report (by rows asked); the count of all is kept
TOP_HOSTS_SHOWN = 5
Z95 = 1.959963984540054
ASSUMPTION = "unresolved rows have the same mean size as resolved rows"

# identity: Content-Length must be the stored object's size, not a compressed transfer's.
IDENTITY = {"Accept-Encoding": "identity"}
RANGE_HEADERS = {**IDENTITY, "Range": "bytes=0-0"}
_CONTENT_RANGE = re.compile(r"bytes\s+(?:\d+-\d+|\*)/(\d+|\*)", re.IGNORECASE)


# -- one URL -------------------------------------------------------------------------------------
@dataclass(slots=True)
class Probe(Outcome):
    """What asking one URL for its size gave (signal, reason, retryable, ttfb, ... as for a download)."""

    size: int | None = None
    method: str | None = None  # head | range | get_length
    requests: int = 1
    fallback: bool = False  # HEAD was refused or gave no length: ask with a Range GET
    head_refused: bool = False  # a retry may skip the HEAD

    @property
    def resolved(self) -> bool:
        return self.size is not None


async def probe_size(session: aiohttp.ClientSession, url: str, timeout: float, max_redirects: int, *,
                     skip_head: bool = False, opted_out: Callable[[aiohttp.ClientResponse], str | None] | None = None,
                     ) -> Probe:
    """The size of one URL's object: HEAD, then a Range GET when HEAD cannot tell. `opted_out(resp)`:
    the X-Robots-Tag directive that keeps a reply out of the dataset, as the download skips it."""
    def read(reader: Callable[[aiohttp.ClientResponse], Awaitable[Probe]]) -> Callable[..., Awaitable[Probe]]:
        async def checked(resp: aiohttp.ClientResponse) -> Probe:
            directive = opted_out(resp) if opted_out is not None and 200 <= resp.status < 300 else None
            if directive is not None:
                resp.close()
                return Probe(Signal.OK, reason=f"x_robots_tag:{directive}", status=resp.status)
            return await reader(resp)
        return checked

    if not skip_head:
        head = await exchange(session, "HEAD", url, timeout, max_redirects, read(_read_head), Probe, IDENTITY)
        if not head.fallback:
            return head
    ranged = await exchange(session, "GET", url, timeout, max_redirects, read(_read_range), Probe, RANGE_HEADERS)
    ranged.requests += 0 if skip_head else 1
    ranged.head_refused = True
    return ranged


async def _read_head(resp: aiohttp.ClientResponse) -> Probe:
    status = resp.status
    if 200 <= status < 300:
        length = resp.content_length
        # A HEAD saying 0 is more often a lazy server than an empty image; the Range GET knows.
        if length:
            return Probe(Signal.OK, size=length, method="head", status=status)
        return Probe(Signal.OK, status=status, fallback=True)
    if status in HEAD_FALLBACK_STATUSES:
        return Probe(Signal.OK, status=status, fallback=True)
    return status_outcome(resp, Probe)


async def _read_range(resp: aiohttp.ClientResponse) -> Probe:
    status = resp.status
    if status == 206 or status == 416:  # 416 with `bytes */0`: an empty object
        total = _content_range_total(resp.headers.get("Content-Range"))
        await _finish(resp)
        if total is not None:
            return Probe(Signal.OK, size=total, method="range", status=status)
        return Probe(Signal.OK, reason="no_total_in_content_range" if status == 206 else "http_416", status=status)
    if 200 <= status < 300:
        # The host ignored the Range and started the whole body: take its length, never the body.
        length = resp.content_length
        resp.close()
        if length is not None:
            return Probe(Signal.OK, size=length, method="get_length", status=status)
        return Probe(Signal.OK, reason="no_length", status=status)
    probe = status_outcome(resp, Probe)
    await _finish(resp)
    return probe


async def _finish(resp: aiohttp.ClientResponse) -> None:
    """Read a small body so the connection goes back to the pool; close on anything larger."""
    length = resp.content_length
    if length is not None and length <= SMALL_BODY:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            await resp.read()
            return
    resp.close()


def _content_range_total(value: str | None) -> int | None:
    match = _CONTENT_RANGE.search(value or "")
    if match is None or match.group(1) == "*":
        return None
    return int(match.group(1))


# -- choosing rows -------------------------------------------------------------------------------
class Reservoir:
    """A uniform random sample of k URLs from a stream of unknown length (Algorithm R).

    Vectorised per batch: only the URLs that enter the sample become Python strings, so memory
    is O(k) whatever the manifest's size.
    """

    def __init__(self, k: int, seed: int) -> None:
        self.k = k
        self.seen = 0
        self.items: list[str | None] = []
        self._rng = np.random.default_rng(seed)

    def offer(self, urls: pa.Array) -> None:
        n = len(urls)
        fill = min(max(self.k - self.seen, 0), n)
        if fill:
            self.items.extend(urls.slice(0, fill).to_pylist())
        if fill < n:
            self._replace(urls, fill)
        self.seen += n

    def _replace(self, urls: pa.Array, first: int) -> None:
        positions = np.arange(first, len(urls))
        # Item number t (0-based, over the whole stream) enters with probability k / (t + 1).
        slots = self._rng.integers(0, self.seen + positions + 1)
        hit = slots < self.k
        positions, slots = positions[hit], slots[hit]
        if not positions.size:
            return
        # Two items of one batch may land in the same slot; as in the sequential algorithm the
        # later one wins, so keep each slot's last occurrence.
        _, last = np.unique(slots[::-1], return_index=True)
        positions, slots = positions[::-1][last], slots[::-1][last]
        for slot, url in zip(slots.tolist(), urls.take(pa.array(positions)).to_pylist(), strict=True):
            self.items[slot] = url


def manifest_paths(cfg: SizeConfig) -> list[str]:
    """The manifest files to size: --input, or every manifest file directly inside --directory."""
    if cfg.input:
        return [cfg.input]
    folder = Path(cfg.directory or "")
    if not folder.is_dir():
        raise ConfigError(f"directory not found: {folder}")
    paths = sorted(str(p) for p in folder.iterdir()
                   if p.is_file() and is_manifest_name(p.name) and not p.name.startswith((".", "_")))
    if not paths:
        raise ConfigError(f"no manifest files ({FORMATS_HELP}) in {folder}")
    return paths


# -- tallies -------------------------------------------------------------------------------------
class Tally:
    """Running totals over finished rows; cheap per row, bounded memory."""

    def __init__(self, seed: int, redact: Callable[[str], str] = str) -> None:
        self.redact = redact  # the report's example URLs are written: no credentials in them
        self.asked = 0
        self.resolved = 0
        self.bytes = 0
        self.sum_sq = 0  # Python ints: exact, so the variance has no cancellation error
        self.requests = 0
        self.methods: Counter[str] = Counter({"head": 0, "range": 0, "get_length": 0})
        self.reasons: Counter[str] = Counter()
        self.examples: list[dict[str, str]] = []
        self.hosts: dict[str, list[int]] = {}  # host -> [rows asked, resolved, bytes]
        self.sizes = array.array("q")
        self._sizes_seen = 0
        self._rng = random.Random(seed)

    def add(self, url: str, host: str, probe: Probe) -> None:
        self.asked += 1
        self.requests += probe.requests
        counts = self.hosts.setdefault(host, [0, 0, 0]) if host else [0, 0, 0]
        counts[0] += 1
        if probe.size is None:
            reason = probe.reason or "unknown"
            self.reasons[reason] += 1
            if len(self.examples) < 10:
                self.examples.append({"url": self.redact(url), "reason": reason})
            return
        self.resolved += 1
        self.bytes += probe.size
        self.sum_sq += probe.size * probe.size
        self.methods[probe.method or "head"] += 1
        counts[1] += 1
        counts[2] += probe.size
        self._keep_size(probe.size)

    def _keep_size(self, size: int) -> None:
        """Sizes for the quantiles: all of them up to QUANTILE_CAP, then a uniform reservoir."""
        self._sizes_seen += 1
        if len(self.sizes) < QUANTILE_CAP:
            self.sizes.append(size)
            return
        slot = self._rng.randrange(self._sizes_seen)
        if slot < QUANTILE_CAP:
            self.sizes[slot] = size

    @property
    def quantiles_exact(self) -> bool:
        return self._sizes_seen <= QUANTILE_CAP


# -- the estimate --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Estimate:
    total: float
    low: float
    high: float


def _variance(n: int, total: int, sum_sq: int) -> float:
    """Sample variance (n - 1 denominator) from exact integer sums."""
    if n < 2:
        return math.nan
    return max((n * sum_sq - total * total) / (n * (n - 1)), 0.0)


def estimate_total(rows_total: int, n: int, total: int, sum_sq: int, fpc: float) -> Estimate:
    """rows_total x the mean of n sampled values, with a normal 95% CI.

    Var(mean) = (1 - n/N) s^2 / n for a simple random sample without replacement; the finite
    population correction makes the interval shrink to nothing when every row was asked.
    """
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan)
    point = rows_total * total / n
    if fpc <= 0:
        return Estimate(point, point, point)
    half = Z95 * rows_total * math.sqrt(fpc * _variance(n, total, sum_sq) / n)
    if math.isnan(half):
        return Estimate(point, math.nan, math.nan)
    return Estimate(point, point - half, point + half)


def estimates(t: Tally, rows_total: int) -> dict[str, Any]:
    fpc = 1.0 - t.asked / rows_total if rows_total else 0.0
    # All rows: mean of the resolved sizes over every row (the stated assumption). The resolved
    # rows of a simple random sample are themselves one, so the same formula applies to them.
    every = estimate_total(rows_total, t.resolved, t.bytes, t.sum_sq, fpc)
    # Resolvable rows only: the mean over asked rows of (size if resolved else 0). This is not
    # "unresolved = 0 bytes" for the object sizes; it estimates the bytes of rows that resolve.
    resolvable = estimate_total(rows_total, t.asked, t.bytes, t.sum_sq, fpc)
    # Observed bytes are a hard floor: no interval may claim less than what was already seen.
    floor = float(t.bytes)
    out = {
        "estimate_total_bytes": _int_or_none(every.total),
        "ci95_low": _int_or_none(max(every.low, floor)),
        "ci95_high": _int_or_none(every.high),
        "estimate_assumes": ASSUMPTION,
        "estimate_resolvable_bytes": _int_or_none(resolvable.total),
        "resolvable_ci95_low": _int_or_none(max(resolvable.low, floor)),
        "resolvable_ci95_high": _int_or_none(resolvable.high),
    }
    unresolved = t.asked - t.resolved
    share = unresolved / t.asked if t.asked else math.nan
    half = Z95 * math.sqrt(fpc * share * (1 - share) / (t.asked - 1)) if t.asked > 1 and fpc > 0 else 0.0
    out["unresolved_share"] = _round_or_none(share)
    out["unresolved_share_ci95"] = [_round_or_none(max(share - half, 0.0)), _round_or_none(min(share + half, 1.0))]
    return out


def _int_or_none(x: float) -> int | None:
    return None if math.isnan(x) else round(x)


def _round_or_none(x: float, digits: int = 6) -> float | None:
    return None if math.isnan(x) else round(x, digits)


# -- the job -------------------------------------------------------------------------------------
class SizeJob:
    def __init__(self, cfg: SizeConfig) -> None:
        cfg.check()  # build_config checks too; a SizeConfig built in code must not skip it
        self.cfg = cfg
        self.paths = manifest_paths(cfg)
        # Opening checks existence, format and the URL column of every file before any request.
        self.manifests = [Manifest(p, cfg.url_column, cfg.input_format) for p in self.paths]
        self.report_path = Path(cfg.report_path())
        self.tally = Tally(cfg.seed, url_redactor(cfg.redact_urls, cfg.redact_params))
        self.rows_total = 0
        self.bar: tqdm[Any] | None = None
        self._disallowed = frozenset(d.lower() for d in cfg.disallowed_header_directives)

    async def run(self) -> dict[str, Any]:
        started = time.monotonic()
        sample = await asyncio.to_thread(self._draw_sample) if self.cfg.sample else None
        self.requests: RequestLoop[Probe] = RequestLoop(self.cfg, self.cfg.concurrent_requests, Probe)
        self.scheduler = self.requests.scheduler
        total = len(sample) if sample is not None else self._rows_hint()
        self.bar = tqdm(total=total, desc="size", unit="url", file=sys.stderr, disable=self.cfg.quiet,
                        mininterval=0.5, dynamic_ncols=True)
        feed = partial(self._feed_sample, sample) if sample is not None else self._feed_all
        try:
            await self.requests.run(feed, self._probe, self._settle, self._on_tick)
            self._show_counts(refresh=True)  # the last tick's counts are up to half a second old
        finally:
            self.bar.close()
        report = build_report(self.cfg, self.paths, self.tally, self.rows_total, sample is not None,
                              time.monotonic() - started, self.report_path)
        for manifest in self.manifests:
            for problem in manifest.problems():
                log.warning("%s", problem)
        await asyncio.to_thread(write_report, self.report_path, report)
        return report

    # -- rows in -------------------------------------------------------------------------------
    def _draw_sample(self) -> list[str | None]:
        reservoir = Reservoir(self.cfg.sample, self.cfg.seed)
        with tqdm(total=self._rows_hint(), desc="sampling", unit="row", file=sys.stderr,
                  disable=self.cfg.quiet, mininterval=0.5, dynamic_ncols=True) as bar:
            for manifest in self.manifests:
                for batch in manifest.batches():
                    reservoir.offer(as_text(batch.column(self.cfg.url_column)))
                    bar.update(batch.num_rows)
        self.rows_total = reservoir.seen
        return reservoir.items

    def _rows_hint(self) -> int | None:
        hints = [m.num_rows_hint() for m in self.manifests]
        return None if any(h is None for h in hints) else sum(h for h in hints if h is not None)

    async def _feed_sample(self, urls: list[str | None]) -> None:
        try:
            for i, url in enumerate(urls):
                await self._submit(i, url)
        finally:
            self.scheduler.close()

    async def _feed_all(self) -> None:
        index = 0
        try:
            for manifest in self.manifests:
                batches = manifest.batches()
                while (batch := await asyncio.to_thread(_next_or_none, batches)) is not None:
                    for url in as_text(batch.column(self.cfg.url_column)).to_pylist():
                        await self._submit(index, url)
                        index += 1
        finally:
            self.rows_total = index
            self.scheduler.close()

    async def _submit(self, index: int, url: str | None) -> None:
        url = (url or "").strip()
        problem = "no_url" if not url else scheme_error(url)
        if problem is not None:  # asked, but nothing a request could answer
            self._final(url, "", Probe(Signal.OBJECT_ERROR, reason=problem, requests=0))
            return
        await self.scheduler.wait_for_room()
        self.scheduler.add(Job(index, str(index), url, host_key(url)))

    # -- requests ------------------------------------------------------------------------------
    def _probe(self, session: aiohttp.ClientSession, job: Job) -> Awaitable[Probe]:
        return probe_size(session, job.url, self.cfg.timeout, self.cfg.max_redirects,
                          skip_head=job.meta.get("skip_head", False), opted_out=self._opted_out)

    def _opted_out(self, resp: aiohttp.ClientResponse) -> str | None:
        return disallowed_directive(resp.headers.getall("X-Robots-Tag", ()), self._disallowed,
                                    self.cfg.user_agent_token)

    async def _settle(self, job: Job, probe: Probe) -> None:
        # A question this run cannot answer (retry_now False: a bad certificate, no such name) is not asked again.
        if probe.retryable and probe.retry_now and job.attempts < MAX_ATTEMPTS:
            # A host that refused HEAD will refuse it again: the retry goes straight to Range.
            job.meta["skip_head"] = probe.head_refused
            job.meta["requests"] = job.meta.get("requests", 0) + probe.requests
            self.scheduler.retry_later(job, _retry_delay(job.attempts, probe.retry_after))
            return
        probe.requests += job.meta.get("requests", 0)
        self._final(job.url, job.host, probe)
        self.scheduler.done(job)

    def _final(self, url: str, host: str, probe: Probe) -> None:
        self.tally.add(url, host, probe)
        if self.bar is not None:
            self.bar.update(1)

    async def _on_tick(self) -> None:
        self._show_counts(refresh=False)

    def _show_counts(self, refresh: bool) -> None:
        if self.bar is not None and not self.cfg.quiet:
            t = self.tally
            self.bar.set_postfix_str(f"resolved={t.resolved} unresolved={t.asked - t.resolved} "
                                     f"{human_bytes(t.bytes)}", refresh=refresh)


def _retry_delay(attempts: int, retry_after: float | None) -> float:
    backoff = RETRY_BACKOFF_S * 2 ** (attempts - 1) * random.uniform(0.5, 1.5)
    return max(backoff, retry_after or 0.0)


def _next_or_none(it: Iterator[pa.RecordBatch]) -> pa.RecordBatch | None:
    return next(it, None)


# -- the report ----------------------------------------------------------------------------------
def build_report(cfg: SizeConfig, paths: list[str], t: Tally, rows_total: int, sampled: bool,
                 elapsed_s: float, report_path: Path) -> dict[str, Any]:
    sizes = np.frombuffer(t.sizes, dtype=np.int64) if len(t.sizes) else None
    report: dict[str, Any] = {
        "inputs": paths,
        "rows_total": rows_total,
        "rows_asked": t.asked,
        "sampled": sampled and t.asked < rows_total,
        "sample": cfg.sample,
        "seed": cfg.seed,
        "resolved": t.resolved,
        "unresolved": t.asked - t.resolved,
        "unresolved_reasons": dict(t.reasons.most_common()),
        "unresolved_examples": t.examples,
        "bytes_resolved": t.bytes,
        **estimates(t, rows_total),
        "mean_object_bytes": round(t.bytes / t.resolved) if t.resolved else None,
        "median_object_bytes": round(float(np.median(sizes))) if sizes is not None else None,
        "p95_object_bytes": round(float(np.percentile(sizes, 95))) if sizes is not None else None,
        "quantiles_exact": t.quantiles_exact,
        "methods": dict(t.methods),
        "requests": t.requests,
        "hosts_total": len(t.hosts),
        "hosts": _host_rows(t.hosts, HOSTS_LISTED),
        "rate_mb_s": cfg.rate_mb_s,
        "elapsed_s": round(elapsed_s, 3),
        "report_path": str(report_path),
        "config": public_dict(cfg),
    }
    report.update(_download_time(report, cfg.rate_mb_s))
    report["summary_text"] = summary_text(report)
    return report


def _host_rows(hosts: dict[str, list[int]], limit: int) -> list[dict[str, Any]]:
    top = sorted(hosts.items(), key=lambda kv: (-kv[1][0], -kv[1][2], kv[0]))[:limit]
    return [{"host": h, "rows_asked": c[0], "resolved": c[1], "bytes": c[2]} for h, c in top]


def _download_time(report: dict[str, Any], rate_mb_s: float) -> dict[str, Any]:
    rate = rate_mb_s * 1e6  # MB/s as decimal megabytes, as network rates are quoted

    def secs(n: int | None) -> float | None:
        return None if n is None or rate <= 0 else round(n / rate, 1)

    return {
        "estimated_download_seconds": secs(report["estimate_total_bytes"]),
        "estimated_download_seconds_ci95": [secs(report["ci95_low"]), secs(report["ci95_high"])],
    }


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Write to a temporary name, then rename: a reader never sees half a report."""
    try:
        write_local(os.path.abspath(path), (json.dumps(report, indent=2) + "\n").encode("utf-8"))
    except OSError as exc:  # checked before the requests; what changed since (permissions, a full disk)
        raise DestinationError(f"cannot write the report {path}: {exc.strerror or exc}") from None


# -- human text ----------------------------------------------------------------------------------
def human_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} PiB"


def human_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    seconds = round(s)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def summary_text(r: dict[str, Any]) -> str:
    asked, total = r["rows_asked"], r["rows_total"]
    how = f"a random sample of {asked:,} (seed {r['seed']})" if r["sampled"] else f"all {asked:,}"
    lines = [f"flowdc size: {total:,} rows in {len(r['inputs'])} file(s); asked {how}", *_estimate_lines(r)]
    share = 100.0 * r["resolved"] / asked if asked else 0.0
    reasons = ", ".join(f"{k} {v:,}" for k, v in list(r["unresolved_reasons"].items())[:5])
    lines.append(f"  resolved {r['resolved']:,} of {asked:,} asked ({share:.1f}%)"
                 + (f"; unresolved {r['unresolved']:,}: {reasons}" if r["unresolved"] else ""))
    m = r["methods"]
    lines.append(f"  sizes from: HEAD {m['head']:,}, Range GET {m['range']:,}, GET Content-Length "
                 f"{m['get_length']:,} ({r['requests']:,} requests)")
    lines.extend(_hosts_lines(r))
    lines.append(_time_line(r))
    lines.append(f"  report: {r['report_path']}")
    return "\n".join(lines)


def _estimate_lines(r: dict[str, Any]) -> list[str]:
    estimate = f"  estimated total: {human_bytes(r['estimate_total_bytes'])}"
    if r["sampled"]:
        estimate += f" (95% CI {human_bytes(r['ci95_low'])} - {human_bytes(r['ci95_high'])})"
    lines = [estimate]
    if r["unresolved"]:
        lines.append(f"    assumes {ASSUMPTION}; rows that resolve only: "
                     f"{human_bytes(r['estimate_resolvable_bytes'])}")
    if r["resolved"]:
        lines.append(f"  object size: mean {human_bytes(r['mean_object_bytes'])}, median "
                     f"{human_bytes(r['median_object_bytes'])}, p95 {human_bytes(r['p95_object_bytes'])}")
    return lines


def _hosts_lines(r: dict[str, Any]) -> list[str]:
    top = sorted(r["hosts"], key=lambda h: -h["bytes"])[:TOP_HOSTS_SHOWN]
    if not top:
        return []
    where = " (in the sample)" if r["sampled"] else ""
    hosts = "; ".join(f"{h['host']} {h['rows_asked']:,} rows {human_bytes(h['bytes'])}" for h in top)
    return [f"  top hosts{where}: {hosts}"]


def _time_line(r: dict[str, Any]) -> str:
    line = f"  estimated download time at {r['rate_mb_s']:g} MB/s: {human_seconds(r['estimated_download_seconds'])}"
    low, high = r["estimated_download_seconds_ci95"]
    if r["sampled"] and low is not None and high is not None:
        line += f" ({human_seconds(low)} - {human_seconds(high)})"
    return line


# -- entry points --------------------------------------------------------------------------------
async def size_async(cfg: SizeConfig) -> dict[str, Any]:
    """run_size for async code (a notebook's running loop): the same report dict."""
    return await SizeJob(cfg).run()


def run_size(cfg: SizeConfig) -> dict[str, Any]:
    """Size the manifest(s) of cfg, write the JSON report and return it (with summary_text).

    Inside a running event loop it runs in a helper thread; in async code `await size_async(cfg)`.
    """
    return run_sync(lambda: size_async(cfg), "flowdc.size.size_async")

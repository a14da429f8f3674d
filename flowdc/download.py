"""The download job: manifest -> scheduler -> fetch -> writer -> ledger, with telemetry read off the side.

Everything here is wiring; the decisions live in the modules it calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import multiprocessing as mp
import os
import random
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from functools import partial
from typing import Any

import aiohttp
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flowdc import child_process, write_process
from flowdc.archive import ArchiveBuilder, ArchiveStopped, create_archive, start_archive
from flowdc.config import DownloadConfig, check_host_budget
from flowdc.errors import NO_SPACE, REFUSED, ConfigError, DestinationError, failure_words, then_again
from flowdc.fetch import FetchSettings, Outcome, digest, fetch_one
from flowdc.identity import RepeatNumbering, base_hashes
from flowdc.images import check_sample, resize_batch, start_resize
from flowdc.imagesig import DUPLICATE
from flowdc.ledger import Ledger, Record, meta_json, url_hash
from flowdc.loops import run_sync
from flowdc.manifest import ROW_COLUMN, Manifest, as_text
from flowdc.overview import build_overview, write_overview
from flowdc.ownership import LAYOUT_OPTIONS, OutputClaim, claim_output
from flowdc.progress import ProgressBar, RunCounters
from flowdc.requestloop import RequestLoop
from flowdc.resize import ResizeSettings
from flowdc.samplemeta import MANIFEST, kept_apart
from flowdc.scheduler import Job
from flowdc.seen import SeenKeys
from flowdc.shard_process import ShardWriteLane
from flowdc.shipping import Shipper, uploader_for
from flowdc.storage import Destination, is_destination_error
from flowdc.telemetry import HostSnapshot, RunSnapshot, Snapshot, Telemetry
from flowdc.urls import host_and_problem, host_key, url_redactor
from flowdc.write_queue import INLINE_MAX_S, Lane, WriteQueue
from flowdc.writers.base import SampleRefused, SampleWriter, StoredSample, StoreError
from flowdc.writers.factory import make_writer
from flowdc.writers.imagefolder import ImageFolderWriter
from flowdc.writers.naming import extension_for, make_key, url_key
from flowdc.writers.shardnames import ShardNames
from flowdc.writers.webdataset import WebDatasetWriter

log = logging.getLogger(__name__)

MAX_STORE_TRIES = 5
SNAPSHOT_S = 0.5
# A manifest batch is turned into jobs this many rows at a time, the loop free in between: a whole
# 8192-row batch held it for 70-80 ms, so the first requests left that much later and the first
# replies waited as long to be read (and PAARC's first interval read our delay as the host's).
# Small, too: at the start each step of every connect waits for a slice, and with 512 rows (5-8 ms)
# a host's first 8 requests left over 50 ms. A token bucket refilled meanwhile, its cold start
# served 14-15 where it holds 10, and PAARC's reveal read a 100/s bucket as 54-63/s (78-87 now).
FEED_SLICE_ROWS = 128


def run_download(cfg: DownloadConfig, telemetry: Telemetry | None = None) -> dict[str, Any]:
    """The CLI's whole job; returns the overview. Ctrl-C stops cleanly and keeps what is stored.

    Inside a running event loop (a notebook) the download runs in a helper thread (flowdc.loops.run_sync);
    in async code, `await download_async(cfg)` instead.
    The process lifecycle lives here, not in DownloadJob: garbage-collector pacing, signal handlers
    and the progress bar are the process's to set, so the library call (flowdc.api) leaves them alone.
    """
    with fewer_collections():
        return run_sync(lambda: download_async(cfg, telemetry), "flowdc.download.download_async")


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """Pace the cyclic garbage collector for a download, then restore it.

    A download makes a great many short-lived objects and few cycles. At the default pace (a
    collection every 700 new objects, older ones scanned again and again) the collector took 3-5%
    of the CPU on small images (three side-by-side comparisons on the unthrottled bench).
    """
    old = gc.get_threshold()
    gc.freeze()  # what exists before the run (modules, the config) is no garbage: scan it no more
    gc.set_threshold(20_000, 20, 20)
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()


async def download_async(cfg: DownloadConfig, telemetry: Telemetry | None = None) -> dict[str, Any]:
    """One download as a process runs it: SIGINT/SIGTERM stop it cleanly, a progress bar unless quiet."""
    return await run_in_process(DownloadJob(cfg, telemetry), show_progress=not cfg.quiet)


async def run_in_process(job: DownloadJob, show_progress: bool) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
            loop.add_signal_handler(sig, job.stop)
            installed.append(sig)
    try:
        async with showing_progress(job, ProgressBar() if show_progress else None):
            return await job.run()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


@contextlib.asynccontextmanager
async def showing_progress(job: DownloadJob, bar: ProgressBar | None) -> AsyncIterator[None]:
    """Redraw `bar` from the job's counters while the body runs, then draw the final figures and close it."""
    if bar is None:
        yield
        return
    painter = asyncio.create_task(_paint(job, bar))
    try:
        yield
    finally:
        painter.cancel()
        await asyncio.gather(painter, return_exceptions=True)
        bar.show(job.counters, job.rows_total, job.hosts_active)
        bar.close()


async def _paint(job: DownloadJob, bar: ProgressBar) -> None:
    while True:
        await asyncio.sleep(SNAPSHOT_S)
        bar.show(job.counters, job.rows_total, job.hosts_active)


class DownloadJob:
    """The wiring of one download: manifest -> scheduler -> fetch -> writer -> ledger.

    It touches nothing process-wide (no signal handlers, no GC settings, no output on the terminal),
    so two jobs can run at once in one process, each on its own event loop. The constructor does
    no I/O: opening the manifest and the destination (and --force) happen in run().
    """

    def __init__(self, cfg: DownloadConfig, telemetry: Telemetry | None = None, *,
                 host_budget: Mapping[str, float] | None = None, run_id: str | None = None,
                 partition_id: str | None = None):
        self.cfg = cfg
        self.telemetry = telemetry  # the caller's: published to, never closed here
        self._own_telemetry: Telemetry | None = None  # cfg.telemetry / telemetry_push, made and closed in run()
        self._listeners: list[Telemetry] = [telemetry] if telemetry is not None else []
        self.host_budget = check_host_budget(host_budget if host_budget is not None
                                             else getattr(cfg, "host_budget", None) or {})
        self.run_id = run_id or cfg.run_id or uuid.uuid4().hex[:12]
        self.claim: OutputClaim | None = None
        self.partition_id = partition_id or cfg.partition_id
        self.settings = FetchSettings.of(cfg)
        # One writer thread keeps a shard's members in order; files can be written in parallel.
        self.write_lanes = 1 if cfg.output_format == "webdataset" else 8
        self.counters = RunCounters()
        self.rows_total: int | None = None  # known once the manifest is open (parquet metadata)
        self.hosts_active = 0
        self.host_snapshots: dict[str, dict[str, Any]] = {}
        self.interrupted = False
        self._stop_requested = False
        self._stop_event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._seen_keys = SeenKeys()  # url_based mode: keys already taken, to catch duplicate URLs
        self._identities = RepeatNumbering()  # each manifest row's identity, repeats numbered in order
        self._store_failures: dict[int, int] = {}
        self._full: DestinationError | None = None  # the destination ran out of space: the run stops with this
        self._kept_by_hash: dict[str, str] = {}  # --dedupe sha256: sha256 -> the key that holds those bytes
        self._polling: asyncio.Future[None] | None = None  # the writer's poll, at most one queued
        self._shard_lane: ShardWriteLane | None = None  # a webdataset's write process, once started
        self.redact = url_redactor(cfg.redact_urls, cfg.redact_params)  # for URLs written; requests use the real one

    def stop(self) -> None:
        """Ask the run to stop, from any thread: what is stored is kept, the rest waits for a rerun."""
        self._stop_requested = True
        if self.uploader is not None:  # an upload can hang for its timeout_s, times its attempts
            self.uploader.stop()
        loop, event = self._loop, self._stop_event
        if loop is not None and event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(event.set)

    @property
    def _writes_inline(self) -> bool:
        """A file per sample on a local disk goes on the event loop (write_queue.py says why), and so
        do shards appended in place where a write process will take their byte work over
        (shard_process.py); resizing, full decodes, staged shards and remote stores keep their threads."""
        if self.resize_pool is not None or self.cfg.verify == "full":
            return False
        if self.cfg.output_format == "imagefolder":
            return self.dest.local
        return isinstance(self.writer, WebDatasetWriter) and self.writer.append and child_process.available()

    @property
    def _in_a_process(self) -> bool:
        """The inline writes move to a write process on a long run (write_process.py); not with a
        gzip archive, whose stream cannot be lent out."""
        return (self._writes_inline and child_process.available()
                and not (self._archiving and self.cfg.archive_format != "tar"))

    async def _start_write_process_first(self, loop: asyncio.AbstractEventLoop) -> None:
        """A run known to be long starts its write process before its first request, and waits
        until the child has loaded: loading on the second core while the hosts' cold starts timed
        their first replies, it cost the polite bench a second Retry-After hold (docs/benchmarks.md).
        A run not known to be long starts it once START_AFTER samples were written."""
        deadline = loop.time() + write_process.READY_TIMEOUT_S
        self.write_queue.start_lane()
        lane = self.write_queue.lane
        while lane is not None and not lane.ready(0) and loop.time() < deadline:
            await asyncio.sleep(0.005)  # its answers are read on this loop: so is its first message

    def _start_write_process(self) -> Lane:
        if isinstance(self.writer, WebDatasetWriter):
            self._shard_lane = ShardWriteLane(self.writer, self._write_checked, self.cfg.verify)
            return self._shard_lane
        assert isinstance(self.writer, ImageFolderWriter)
        return write_process.WriteProcess(self.writer, self.archive, self.cfg.verify)

    @property
    def _archiving(self) -> bool:
        return self.cfg.create_tar and self.cfg.output_format == "imagefolder"

    def _open(self) -> None:
        """Open the manifest and claim the output (ownership, lock or lease; --force removes what
        flowdc wrote there)."""
        cfg = self.cfg
        self.manifest = Manifest(cfg.input, cfg.url, cfg.input_format, cfg.batch_rows, cfg.input_storage_options)
        if cfg.label:
            self.manifest.require_column(cfg.label, "label")
        if cfg.key_col:
            self.manifest.require_column(cfg.key_col, "key")
        self.dest = Destination(cfg.output, cfg.storage_options)
        inside = self.dest.local and os.path.realpath(cfg.input).startswith(os.path.realpath(self.dest.root) + os.sep)
        if cfg.force and inside:
            raise ConfigError(f"--force would delete the input manifest {cfg.input}: it is inside the output")
        self.ledger = Ledger(self.dest)
        self.uploader = uploader_for(cfg)
        self.extra_columns = [c for c in self.manifest.columns if c not in {cfg.url, cfg.label, ROW_COLUMN}]
        self.rows_total = self.manifest.num_rows_hint()
        # From here on the output is this run's (mark, lock or lease, --force) until run() ends.
        self.claim = claim_output(self.dest, run_id=self.run_id, force=cfg.force, lease_ttl_s=cfg.lease_ttl_s,
                                  on_lost=lambda _message: self.stop(),
                                  layout={name: getattr(cfg, name) for name in LAYOUT_OPTIONS})
        if cfg.telemetry or cfg.telemetry_push:  # after the claim: the telemetry file may be inside the output
            try:
                self._own_telemetry = Telemetry(cfg.telemetry, push_url=cfg.telemetry_push,
                                                storage_options=cfg.storage_options)
            except BaseException:
                self.claim.release()
                raise
            self._listeners.append(self._own_telemetry)

    async def run(self) -> dict[str, Any]:
        started_wall = time.time()
        self.counters = RunCounters()
        self._loop = asyncio.get_running_loop()
        self._stop_event = stop = asyncio.Event()
        if self._stop_requested:
            stop.set()
        self._open()
        self.write_pool = ThreadPoolExecutor(max_workers=self.write_lanes, thread_name_prefix="flowdc-writer")
        self.hash_pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="flowdc-hash")
        self.resize = ResizeSettings(self.cfg.image_size, self.cfg.resize_mode, self.cfg.resize_only_if_bigger,
                                     self.cfg.encode_format, self.cfg.encode_quality)
        # Spawned, not forked: this process runs threads (DNS, writers), and a fork copies their locks.
        self.resize_pool = ProcessPoolExecutor(self.cfg.processes_count, mp_context=mp.get_context("spawn")) \
            if self.resize.active else None
        self.archive: ArchiveBuilder | None = None
        try:
            return await self._run(started_wall, stop)
        finally:
            if self.archive is not None:
                self.archive.discard()  # an interrupted or failed run: no archive (finish() went first otherwise)
            self.write_pool.shutdown(wait=True)
            self.hash_pool.shutdown(wait=True)
            scheduler = getattr(self, "scheduler", None)
            self._publish(scheduler.snapshot() if scheduler is not None else {}, done=True)
            if self.resize_pool is not None:
                self.resize_pool.shutdown(wait=True, cancel_futures=True)
            if self._own_telemetry is not None:
                self._own_telemetry.close()
            if self.claim is not None:
                self.claim.release()

    async def _run(self, started_wall: float, stop: asyncio.Event) -> dict[str, Any]:
        cfg = self.cfg
        self.shipper: Shipper | None = None
        if self.uploader is not None:
            self.shipper = Shipper(self.uploader, self.dest, ShardNames(cfg.shard_prefix))
        self.archive = start_archive(self.dest, cfg.archive_format) if self._archiving and self.dest.local else None
        self.writer: SampleWriter = make_writer(
            cfg.output_format, self.dest, self.ledger, labelled=cfg.label is not None,
            samples_per_shard=cfg.samples_per_shard, shard_max_seconds=cfg.shard_max_seconds,
            image_key=cfg.image_key, shard_prefix=cfg.shard_prefix,
            on_shard_commit=self.shipper.ship_shard if self.shipper else None,
            on_stored=self.archive.add if self.archive is not None else None,
            manifest_types={name: self.manifest.column_type(name) for name in self.extra_columns})
        self.write_queue = WriteQueue(self._write_checked, self.write_pool, lanes=self.write_lanes,
                                      on_error=self._store_failed, more_coming=self._fetches_left,
                                      prepare=self._resize_batch if self.resize_pool is not None else None,
                                      inline_max_s=INLINE_MAX_S if self._writes_inline else None,
                                      start_process=self._start_write_process if self._in_a_process else None,
                                      process_after=write_process.START_AFTER)
        try:
            recovery = await asyncio.to_thread(self.writer.recover)
            done = await asyncio.to_thread(self.ledger.done_index)
            done.on_move = self.ledger.remember_moves
            if cfg.dedupe == "sha256":
                self._kept_by_hash = await asyncio.to_thread(stored_hashes, self.ledger)
        except Exception as exc:
            if not is_destination_error(exc):
                raise
            raise DestinationError(f"cannot read {self.dest.display}: {type(exc).__name__}: {exc}") from None
        if cfg.output_format == "webdataset" and (apart := kept_apart(self.extra_columns)):
            # Once the output is known good: a refused run says its one line and nothing else.
            log.warning("manifest columns named like flowdc's sample fields are kept under %r in each sample's .json "
                        "and shard parquet: %s", MANIFEST, ", ".join(apart))
        if self.shipper is not None and cfg.output_format == "webdataset":
            recovery["shards_left_to_ship"] = self.shipper.ship_leftovers(self.ledger.committed_shards())
        self.requests: RequestLoop[Outcome] = RequestLoop(cfg, cfg.concurrent_downloads, Outcome, self.host_budget)
        self.scheduler, self.client_load = self.requests.scheduler, self.requests.client_load
        self._next_snapshot = 0.0
        loop = asyncio.get_running_loop()
        try:
            if self.rows_total is not None and self.rows_total - len(done.rows) >= write_process.START_AFTER:
                await self._start_write_process_first(loop)
            self.interrupted = await self.requests.run(partial(self._read_manifest, done), self._fetch, self._settle,
                                                       self._on_tick, stop)
        finally:
            self.scheduler.closed_for_good = True
            await self._close_writer(loop)
        if self._full is not None:
            raise self._full
        self.counters.client_busy_share = self.client_load.busy_share
        try:
            overview = await asyncio.to_thread(
                build_overview, self.cfg, self.ledger, self.counters, self.host_snapshots, started_wall,
                recovery, self.interrupted, self.rows_total, self.manifest.problems(),
            )
            if self.cfg.create_overview:
                await asyncio.to_thread(write_overview, self.dest, overview)
        except Exception as exc:
            if not is_destination_error(exc):
                raise
            raise DestinationError(f"cannot write the overview to {self.dest.display}: {failure_words(exc)}; the "
                                   f"samples are stored, {then_again(exc)}") from None
        if self._archiving and not self.interrupted:
            stopped = partial(getattr, self, "_stop_requested")  # the earlier runs' files can take long to pack
            try:
                overview["archive"] = await asyncio.to_thread(
                    partial(self.archive.finish, stopped) if self.archive is not None
                    else partial(create_archive, self.dest, cfg.archive_format, stopped))
            except ArchiveStopped:
                self.interrupted = overview["interrupted"] = True  # the archive is the next run's to make
                overview["archive"] = None
            if self.cfg.create_overview and (overview["archive"] or self.interrupted):
                # Again, now naming the archive (the archive holds the overview as it was before), or the stop.
                await asyncio.to_thread(write_overview, self.dest, overview)
        if self.shipper is not None:
            await self._ship_the_rest(overview)
        return overview

    async def _close_writer(self, loop: asyncio.AbstractEventLoop) -> None:
        """Write what is queued, commit the open shard and flush the ledger; samples the store lost
        become transient failures."""
        try:
            await self.write_queue.drain()
            self.write_queue.close()
            await loop.run_in_executor(self.write_pool, self.writer.close)
        except StoreError as err:
            self._store_failed(err)
            await asyncio.to_thread(self._final_flush)
        except child_process.WriteProcessDied:
            await asyncio.to_thread(self._final_flush)  # the samples it did store are recorded
            raise
        except Exception as exc:
            if not is_destination_error(exc):
                raise
            with contextlib.suppress(DestinationError):
                await asyncio.to_thread(self._final_flush)  # keep the records that can still be kept
            raise DestinationError(f"cannot finish writing to {self.dest.display}: {failure_words(exc)}; "
                                   f"{then_again(exc)}") from None
        finally:
            self.write_queue.abort()  # a failed run's write process stops here (a good run's has)
            if self._shard_lane is not None:  # after the writer's close (on its thread), which used it
                await loop.run_in_executor(self.write_pool, self._shard_lane.shutdown)

    async def _ship_the_rest(self, overview: dict[str, Any]) -> None:
        """Wait for shard uploads, then ship the archive (moved) and the overview (copied)."""
        assert self.shipper is not None
        await self.shipper.drain()
        archive = overview.get("archive")
        if archive:
            up = self.dest.parent()
            name = archive.rsplit("/", 1)[-1]
            shipper = Shipper(self.shipper.uploader, up)
            shipper.ship_file(name)
            await shipper.drain()
            self.shipper.shipped += shipper.shipped
            self.shipper.failed += shipper.failed
        def tally() -> dict[str, Any]:
            assert self.shipper is not None
            return {"tool": self.cfg.cloud_tool, "shipped": len(self.shipper.shipped),
                    "failed": list(self.shipper.failed)}

        overview["uploads"] = tally()
        if self._stop_requested:  # stopped while shipping: the rerun ships the rest
            overview["interrupted"] = True
        if self.cfg.create_overview:  # written again, naming the uploads, then shipped itself
            await asyncio.to_thread(write_overview, self.dest, overview)
            self.shipper.ship_file("overview.json", keep_local=True)
            await self.shipper.drain()
            overview["uploads"] = tally()

    # -- reading the manifest -------------------------------------------------------------------
    async def _read_manifest(self, done: Any) -> None:
        batches = self.manifest.batches()
        try:
            while True:
                batch = await asyncio.to_thread(_next_or_none, batches)
                if batch is None:
                    break
                for at in range(0, batch.num_rows, FEED_SLICE_ROWS):
                    for job in self._jobs_of(batch.slice(at, FEED_SLICE_ROWS), done):
                        await self.scheduler.wait_for_room()
                        self.scheduler.add(job)
                    await asyncio.sleep(0)  # the replies that came meanwhile are read before the next slice
        finally:
            self.scheduler.close()

    def _jobs_of(self, batch: pa.RecordBatch, done: Any) -> Iterator[Job]:
        urls = as_text(batch.column(self.cfg.url)).to_pylist()
        hashes = np.fromiter((url_hash(u or "") for u in urls), dtype=np.int64, count=len(urls))
        ids = batch.column(self.cfg.key_col).to_pylist() if self.cfg.key_col else None
        idents = self._identities(base_hashes(urls, ids, hashes))
        # Rows are placed by identity: a manifest whose rows moved, or that gained and lost rows, is a refresh.
        rows, finished = done.place(batch.column(ROW_COLUMN).to_numpy(), idents, self._manifest_end)
        self.counters.skip_done(int(finished.sum()))
        if self.cfg.naming_mode == "url_based":
            # URLs an earlier run stored keep their keys: a repeat of one is still a duplicate. Only
            # stored ones: a repeat skipped while its first row failed, or was cut off by a kill, would
            # make that row a duplicate of itself, and the URL was never stored.
            for i in np.flatnonzero(finished & done.holds(idents)):
                self._seen_keys.add(url_key((urls[i] or "").strip()))
        labels = as_text(batch.column(self.cfg.label)).to_pylist() if self.cfg.label else None
        extras = batch.select(self.extra_columns).to_pylist() if self.extra_columns else None
        for i in np.flatnonzero(~finished):
            row, url = int(rows[i]), (urls[i] or "").strip()
            label = labels[i] if labels else None
            meta = extras[i] if extras else {}
            key = make_key(self.cfg.naming_mode, row, url)
            host, problem = host_and_problem(url) if url else ("", "no_url")
            if problem is None and self.cfg.naming_mode == "url_based":
                problem = None if self._seen_keys.add(key) else "duplicate_url"
            if problem is not None:
                status = "skipped" if problem in ("no_url", "duplicate_url") else "failed"
                # No metadata copy for rows never fetched: the manifest still has it.
                # A repeated URL has the key of the row that holds its bytes (url_based keys are the URL's).
                self._final(Record(row, key, self.redact(url), status, label=label, reason=problem,
                                   url_hash=int(hashes[i]), ident=int(idents[i]),
                                   duplicate_of=key if problem == "duplicate_url" else None))
                continue
            yield Job(row, key, url, host, label, meta, url_hash=int(hashes[i]), ident=int(idents[i]))

    def _manifest_end(self) -> int:
        """One past the largest row number of the manifest: rows that must move are numbered from there."""
        if self.rows_total is not None and ROW_COLUMN not in self.manifest.columns:
            return self.rows_total
        end = 0
        for batch in self.manifest.batches():  # a second pass, only when a refresh moved rows
            end = max(end, int(pc.max(batch.column(ROW_COLUMN)).as_py()) + 1)
        return end

    # -- fetching -------------------------------------------------------------------------------
    def _fetch(self, session: aiohttp.ClientSession, job: Job) -> Awaitable[Outcome]:
        return fetch_one(session, job.url, self.settings)

    async def _settle(self, job: Job, outcome: Outcome) -> None:
        if outcome.ok:
            await self._store(job, outcome)  # the job is done once a writer has the sample
        elif outcome.retryable and outcome.retry_now and job.attempts <= self.cfg.max_retry_attempts:
            self.counters.retries += 1
            self.scheduler.retry_later(job, self._retry_delay(job, outcome))
        else:
            self._final(self._record(job, outcome, "skipped" if outcome.skipped else "failed"))
            self.scheduler.done(job)

    def _retry_delay(self, job: Job, outcome: Outcome) -> float:
        if outcome.retry_after:
            # The server named the time. Growing it per attempt on top would only add a tail:
            # the host's own pushback is paced and held by PAARC, not by per-URL delays. (A
            # Retry-After of 0, or a date past by a slow clock, names none: the backoff holds.)
            return outcome.retry_after
        return self.cfg.retry_backoff_sec * 2 ** (job.attempts - 1) * random.uniform(0.5, 1.5)

    async def _store(self, job: Job, outcome: Outcome) -> None:
        # Counted as ok now; a sample the destination loses is taken back by _store_failed.
        assert outcome.body is not None
        rec = self._record(job, outcome, "ok")
        if self.cfg.dedupe == "sha256":
            # Dedupe decides here, so it needs the digest now; in a thread, as hashlib releases the GIL.
            rec.sha256 = await asyncio.get_running_loop().run_in_executor(self.hash_pool, digest, outcome.body)
        if self.cfg.dedupe == "sha256" and self._is_duplicate(rec):
            self._final(rec)
            self.scheduler.done(job)
            return
        sample = StoredSample(rec, outcome.body, extension_for(outcome.content_type, job.url, outcome.body), job.meta)
        if self.resize_pool is not None:
            start_resize(sample, self.resize_pool, self.resize)
        await self.write_queue.put(sample, partial(self.scheduler.done, job))
        self.counters.record("ok", len(outcome.body))

    def _is_duplicate(self, rec: Record) -> bool:
        """--dedupe sha256: the first row with these bytes keeps them (a refetch of the same row too)."""
        assert rec.sha256 is not None
        kept = self._kept_by_hash.setdefault(rec.sha256, rec.key)
        if kept == rec.key:
            return False
        rec.status, rec.reason, rec.duplicate_of = "skipped", DUPLICATE, kept
        return True

    def _resize_batch(self, batch: list[StoredSample]) -> None:
        assert self.resize_pool is not None
        for sample in batch:  # the ledger's sha256 is the served body's, not the resized one's
            _digest(sample)
        resize_batch(batch, self.resize_pool, self.resize)

    def _write_checked(self, sample: StoredSample) -> None:
        """Runs in a writer thread: the digest (off the event loop: at thousands of samples a second
        it took the loop's core from the sockets), the decode check (flowdc.images), then the write."""
        _digest(sample)
        check_sample(sample, self.cfg.verify)
        self.writer.write(sample)

    def _fetches_left(self) -> bool:
        """Whether any job may still bring a sample: not every unfinished job sits in the write queue."""
        return not self.scheduler.closed or self.scheduler.pending > self.write_queue.queued

    def _store_failed(self, err: StoreError) -> None:
        """The destination lost these samples (an outage, a full disk): fetch them again later in
        this run, or, after too many tries, leave them as transient failures for the next run."""
        code = getattr(err.cause, "errno", None)
        if code in NO_SPACE and self._full is None:
            # Every further sample would fail alike, and a retry loop only fills the ledger: stop.
            self._full = DestinationError(f"{self.dest.display} is full ({failure_words(err.cause)}); what is stored "
                                          "is kept: free space, then run the same command again to resume")
            self.stop()
        # A full destination, or a folder that refuses writes (a label's, say), refuses the retries
        # too: such samples are left to the next run at once.
        retrying = code not in NO_SPACE and code not in REFUSED
        reason = "store_error:no_space" if code in NO_SPACE else f"store_error:{type(err.cause).__name__}"
        for rec in err.records:
            self.counters.unrecord_ok(rec.bytes or 0)
            if isinstance(err, SampleRefused):  # the body's fault: final, never fetched again
                if self._kept_by_hash.get(rec.sha256 or "") == rec.key:
                    del self._kept_by_hash[rec.sha256 or ""]  # not stored: these bytes are kept nowhere
                rec.status, rec.reason, rec.retryable, rec.path, rec.shard = "failed", err.reason, False, None, None
                self._final(rec)
                continue
            tries = self._store_failures[rec.row] = self._store_failures.get(rec.row, 0) + 1
            if retrying and tries <= MAX_STORE_TRIES and not self.scheduler.closed_for_good:
                self.counters.retries += 1
                self.scheduler.add_later(job_of(rec), self.cfg.retry_backoff_sec * 2 ** (tries - 1) + 1.0)
                continue
            rec.status, rec.reason, rec.retryable, rec.path, rec.shard = "failed", reason, True, None, None
            self._final(rec)

    def _record(self, job: Job, outcome: Outcome, status: str) -> Record:
        return Record(
            job.row, job.key, self.redact(job.url), status, label=job.label, reason=outcome.reason,
            retryable=outcome.retryable, source_url=job.url,
            http_status=outcome.status, bytes=len(outcome.body) if outcome.body else None, sha256=outcome.sha256,
            attempts=job.attempts, host=job.host,
            ttfb_ms=None if outcome.ttfb is None else outcome.ttfb * 1000.0,
            meta=meta_json(job.meta), url_hash=job.url_hash, ident=job.ident,
        )

    def _final_flush(self) -> None:
        try:
            self.ledger.flush()
        except Exception as exc:
            raise DestinationError(f"cannot write the ledger to {self.dest.display}: {failure_words(exc)}; "
                                   f"{then_again(exc)}") from None

    def _final(self, rec: Record) -> None:
        """A row that ends without a stored sample: into the ledger, the open shard's list and the counters."""
        self.ledger.add(rec)
        self.writer.note_ended(rec)
        self.counters.record(rec.status, 0, rec.reason)

    # -- the side loop --------------------------------------------------------------------------
    async def _on_tick(self) -> None:
        now = time.monotonic()
        if now < self._next_snapshot:
            return
        self._next_snapshot = now + SNAPSHOT_S
        snap = self.scheduler.snapshot()
        self._keep_host_snapshots(snap)
        self.hosts_active = len(snap)
        self._publish(snap)
        await asyncio.to_thread(self.ledger.flush_if_due)
        self._poll_writer(asyncio.get_running_loop())

    def _publish(self, snap: dict[str, dict[str, Any]], done: bool = False) -> None:
        """Typed snapshots to whoever listens; nothing is built when no one does."""
        listeners = [tel for tel in self._listeners if tel.active]
        if not listeners:
            return
        t = time.time()
        batch: list[Snapshot] = [HostSnapshot.of(t, host, figures, self.run_id, self.partition_id)
                                 for host, figures in snap.items()]
        c = self.counters
        elapsed = c.elapsed()
        batch.append(RunSnapshot(
            t, self.run_id, self.partition_id, ok=c.ok, failed=c.failed, skipped=c.skipped, retries=c.retries,
            bytes=c.bytes, already_done=c.already_done, rows_total=self.rows_total, elapsed_s=round(elapsed, 3),
            rate_per_s=round(c.ok / elapsed, 2), mb_per_s=round(c.bytes / elapsed / 1e6, 3),
            hosts_active=self.hosts_active, done=done, interrupted=self.interrupted))
        for tel in listeners:
            tel.publish(batch)

    def _poll_writer(self, loop: asyncio.AbstractEventLoop) -> None:
        """Let the writer act on time between samples (webdataset: sync an appended shard, commit a
        staged one open `shard_max_seconds`). Only with one writer lane: the poll queues behind its writes."""
        poll = getattr(self.writer, "poll", None)
        if poll is None or self.write_lanes != 1:
            return
        if self.write_queue.writer_on_loop:
            if self.write_queue.writer_free:  # else the batch's answer comes first, and writes (and syncs) then
                poll()
        elif self._polling is None or self._polling.done():
            self._polling = loop.run_in_executor(self.write_pool, poll)

    def _keep_host_snapshots(self, snap: dict[str, dict[str, Any]], cap: int = 10_000) -> None:
        self.host_snapshots.update(snap)
        while len(self.host_snapshots) > cap:
            self.host_snapshots.pop(next(iter(self.host_snapshots)))


def _digest(sample: StoredSample) -> None:
    if sample.record.sha256 is None:
        sample.record.sha256 = digest(sample.body)


def stored_hashes(ledger: Ledger) -> dict[str, str]:
    """sha256 -> key of every sample an earlier run stored, so --dedupe holds across runs."""
    latest = ledger.latest(["key", "status", "sha256"])
    ok = latest.filter(pc.equal(latest["status"], "ok"))
    return dict(zip(ok["sha256"].to_pylist(), ok["key"].to_pylist(), strict=True))


def job_of(rec: Record) -> Job:
    meta = json.loads(rec.meta) if rec.meta else {}
    url = rec.source_url or rec.url  # the real URL: the record's own may be redacted
    return Job(rec.row, rec.key, url, rec.host or host_key(url), rec.label, meta, url_hash=rec.url_hash,
               ident=rec.ident)


def _next_or_none(it: Iterator[pa.RecordBatch]) -> pa.RecordBatch | None:
    return next(it, None)

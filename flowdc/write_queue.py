"""Hands fetched samples to the writer in batches: to writer threads, off the event loop, or (a
fast local disk) on the event loop itself.

One hop to a thread per batch, not per sample: every hop wakes the event loop, and a writer
thread woken for each sample keeps taking the GIL just when the loop wants it back from a socket
call. Each sample comes with a callback run once its batch went through a writer, after
`on_error` got the StoreErrors naming every record the destination lost, so the caller can
fetch those again before it counts the batch as done.

Inline mode (a fast local disk): the same batches are written on the event loop. A writer
thread's every system call (open, write, close, rename) hands the GIL to the loop and waits to get
it back; with a file per sample that ping-pong cost more CPU than the writes (futex calls, 30 per
sample). A batch, not each sample as it comes: interleaving a write with every reply cost a
quarter more CPU than the threads on one core. Inline writes are timed: once samples take longer
than `inline_max_s` on average, as on a network file system or with very large images, the queue
goes back to the threads for good.

Process mode (flowdc/write_process.py, flowdc/shard_process.py): from `start_lane()` on (called
before the first request of a run known to be long, or once `process_after` samples were written
inline), the same batches go to a write process instead, and its answers settle them in the order
sent.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from functools import partial
from typing import NamedTuple, Protocol

from flowdc.writers.base import StoredSample, StoreError

log = logging.getLogger(__name__)

INLINE_MAX_S = 0.0005  # mean seconds a sample may take inline: a thumbnail's file and archive member take 0.03-0.3 ms
INLINE_BLOCK = 256  # samples whose mean write time is judged at once (a page-cache stall is one slow sample)


class Queued(NamedTuple):
    sample: StoredSample
    on_done: Callable[[], None]


class Lane(Protocol):
    """A process that writes batches and answers them in the order sent (flowdc.write_process)."""

    room_bytes: int  # bodies on their way that it takes without copying them through its pipe

    @property
    def busy(self) -> bool:
        """A batch is out whose answer the writer has yet to see: the writer must wait for it."""
        ...

    def fileno(self) -> int: ...

    def ready(self, timeout: float | None) -> bool: ...

    def send(self, samples: list[StoredSample]) -> None: ...

    def answers(self) -> Iterator[list[StoreError]]: ...

    def close(self) -> None: ...

    def shutdown(self) -> None: ...


class WriteQueue:
    def __init__(
        self,
        write: Callable[[StoredSample], None],
        pool: Executor,
        *,
        lanes: int,
        on_error: Callable[[StoreError], None],
        prepare: Callable[[list[StoredSample]], None] | None = None,
        more_coming: Callable[[], bool] = lambda: True,
        max_queued: int = 2048,
        max_queued_bytes: int = 256 << 20,
        max_batch: int = 256,
        min_batch: int = 64,
        linger_s: float = 0.05,
        inline_max_s: float | None = None,
        start_process: Callable[[], Lane] | None = None,
        process_after: int = 0,
    ):
        self._write = write
        self._pool = pool
        self._lanes = lanes  # batches written at once; 1 keeps the samples in order
        self._on_error = on_error
        self._prepare = prepare  # runs in the writer thread on a whole batch first (e.g. resizing in processes)
        self._more_coming = more_coming  # whether samples not yet queued may still arrive
        self._max_queued = max_queued
        self._max_queued_bytes = max_queued_bytes  # a sample count alone lets large images pile up
        self._max_batch = max_batch
        self._min_batch = min_batch  # a smaller batch waits up to linger_s for company
        self._linger_s = linger_s
        self._inline_max_s = inline_max_s  # None: always the threads
        self.inline_cost_s: float | None = None  # mean seconds per sample of the last block written inline
        self._inline_s = 0.0
        self._inline_n = 0
        self._timer: asyncio.TimerHandle | None = None
        self._pending: list[Queued] = []
        self._queued = 0  # pending plus in the threads' hands
        self._queued_bytes = 0
        self._busy = 0
        self._changed = asyncio.Event()
        self._failure: BaseException | None = None
        self._start_process = start_process  # inline mode only: hands the batches to a process...
        self._process_after = process_after  # ... once this many samples were written inline
        self._written_inline = 0
        self.lane: Lane | None = None
        self._in_lane: collections.deque[list[Queued]] = collections.deque()

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def inline(self) -> bool:
        """Samples are written on the event loop (until they prove slow)."""
        return self._inline_max_s is not None

    @property
    def writer_on_loop(self) -> bool:
        """The writer is called on the event loop (inline, or as a process's answers come), not in
        the threads: calls into it between batches (a poll) belong on the loop too."""
        return self.inline or self.lane is not None

    @property
    def writer_free(self) -> bool:
        """No batch is out to a process whose answer the writer has yet to see."""
        return self.lane is None or not self.lane.busy

    async def put(self, sample: StoredSample, on_done: Callable[[], None]) -> None:
        """Queue a sample; waits while the writers are `max_queued` samples or `max_queued_bytes`
        behind (a sample larger than that goes through once the queue is empty)."""
        while self._failure is None and (self._queued >= self._max_queued
                                         or self._queued_bytes >= self._max_queued_bytes):
            self._changed.clear()
            await self._changed.wait()
        self._raise_failure()
        self._pending.append(Queued(sample, on_done))
        self._queued += 1
        self._queued_bytes += len(sample.body)
        self._schedule()

    async def drain(self) -> None:
        """Wait until every queued sample went through a writer; raises what a writer raised
        that was not a StoreError."""
        self._dispatch()
        while self._queued and self._failure is None:
            self._changed.clear()
            await self._changed.wait()
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _schedule(self) -> None:
        # Lingering for company that cannot come would only delay the run's last samples.
        if len(self._pending) >= self._min_batch or (self._pending and not self._more_coming()):
            self._dispatch()
        elif self._pending and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._linger_s, self._dispatch)

    def _dispatch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.lane is not None:
            self._write_in_lane()
            return
        if self.inline:
            self._write_inline()
            return
        loop = asyncio.get_running_loop()
        while self._pending and self._busy < self._lanes:
            # Spread what is waiting over the idle lanes, so parallel writers share a burst; but never
            # in batches under min_batch: each batch is a hop to a thread and back (imagefolder's 8
            # lanes cut 64 samples into batches of 8).
            share = max(self._min_batch, -(-len(self._pending) // (self._lanes - self._busy)))
            batch = self._pending[: min(share, self._max_batch)]
            del self._pending[: len(batch)]
            self._busy += 1
            future = loop.run_in_executor(self._pool, write_batch, self._write, [q.sample for q in batch],
                                          self._prepare)
            future.add_done_callback(partial(self._batch_done, batch))

    def _write_inline(self) -> None:
        if self._start_process is not None and self._written_inline >= self._process_after:
            self.start_lane()
            if self.lane is not None:
                self._write_in_lane()
                return
        batch, self._pending = self._pending, []
        if not batch or self._failure is not None:
            self._pending = batch  # after a failure nothing more is written; drain() raises it
            return
        started = time.perf_counter()
        try:
            errors = write_batch(self._write, [q.sample for q in batch], self._prepare)
        except Exception as exc:
            self._settle(batch, [], exc)
            return
        self._time_inline(time.perf_counter() - started, len(batch))
        self._settle(batch, errors)
        self._written_inline += len(batch)

    def start_lane(self) -> None:
        """Hand the inline batches to a write process from now on."""
        start, self._start_process = self._start_process, None
        if start is None:
            return
        try:
            self.lane = start()
        except Exception as exc:  # no process here (a sandbox, no memfd): the loop keeps writing
            log.info("no write process (%s: %s): samples are written on the event loop", type(exc).__name__, exc)
            return
        # What waits for the lane must fit its ring, or bodies would be copied through its pipe.
        self._max_queued_bytes = min(self._max_queued_bytes, self.lane.room_bytes)
        asyncio.get_running_loop().add_reader(self.lane.fileno(), self._lane_answered)

    def _write_in_lane(self) -> None:
        batch, self._pending = self._pending, []
        if not batch or self._failure is not None:
            self._pending = batch
            return
        assert self.lane is not None
        try:
            self.lane.send([q.sample for q in batch])
        except Exception as exc:
            self._settle(batch, [], exc)
            return
        self._in_lane.append(batch)

    def _lane_answered(self) -> None:
        assert self.lane is not None
        try:
            for errors in self.lane.answers():
                self._settle(self._in_lane.popleft(), errors)
        except Exception as exc:
            asyncio.get_running_loop().remove_reader(self.lane.fileno())
            while self._in_lane:
                self._settle(self._in_lane.popleft(), [], exc)

    def close(self) -> None:
        """After drain(): stop the write process (the archive's stream comes back)."""
        lane, self.lane = self.lane, None
        if lane is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(lane.fileno())
            lane.close()

    def abort(self) -> None:
        """A failed or interrupted run: stop the write process whatever it is doing."""
        lane, self.lane = self.lane, None
        if lane is not None:
            with contextlib.suppress(ValueError, OSError, RuntimeError):
                asyncio.get_running_loop().remove_reader(lane.fileno())
            lane.shutdown()

    def _time_inline(self, seconds: float, samples: int) -> None:
        self._inline_s += seconds
        self._inline_n += samples
        if self._inline_n < INLINE_BLOCK:
            return
        self.inline_cost_s = self._inline_s / self._inline_n
        self._inline_s, self._inline_n = 0.0, 0
        assert self._inline_max_s is not None
        if self.inline_cost_s > self._inline_max_s:
            log.info("writes take %.2f ms a sample: written in threads from here on", self.inline_cost_s * 1e3)
            self._inline_max_s = None

    def _batch_done(self, batch: list[Queued], future: asyncio.Future[list[StoreError]]) -> None:
        self._busy -= 1
        if future.cancelled():
            self._settle(batch, [], asyncio.CancelledError())
        elif (exc := future.exception()) is not None:
            self._settle(batch, [], exc)
        else:
            self._settle(batch, future.result())

    def _settle(self, batch: list[Queued], errors: list[StoreError], failure: BaseException | None = None) -> None:
        """A batch went through a writer: report its losses, then count its samples done."""
        self._queued -= len(batch)
        self._queued_bytes -= sum(len(q.sample.body) for q in batch)
        self._changed.set()
        if failure is not None:
            self._failure = self._failure or failure
            return
        for err in errors:
            self._on_error(err)
        for queued in batch:
            queued.on_done()
        self._schedule()


def write_batch(write: Callable[[StoredSample], None], batch: list[StoredSample],
                prepare: Callable[[list[StoredSample]], None] | None = None) -> list[StoreError]:
    """Runs in a writer thread: every sample of the batch, collecting the destination's refusals."""
    if prepare is not None:
        prepare(batch)
    errors = []
    for sample in batch:
        try:
            write(sample)
        except StoreError as err:
            errors.append(err)
    return errors

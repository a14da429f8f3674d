"""Hands fetched samples to the writer threads in batches, off the event loop.

One hop to a thread per batch, not per sample: every hop wakes the event loop, and a writer
thread woken for each sample keeps taking the GIL just when the loop wants it back from a socket
call. Each sample comes with a callback run once its batch went through a writer, after
`on_error` got the StoreErrors naming every record the destination lost, so the caller can
fetch those again before it counts the batch as done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from functools import partial
from typing import NamedTuple

from flowdc.writers.base import StoredSample, StoreError


class Queued(NamedTuple):
    sample: StoredSample
    on_done: Callable[[], None]


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
        self._timer: asyncio.TimerHandle | None = None
        self._pending: list[Queued] = []
        self._queued = 0  # pending plus in the threads' hands
        self._queued_bytes = 0
        self._busy = 0
        self._changed = asyncio.Event()
        self._failure: BaseException | None = None

    @property
    def queued(self) -> int:
        return self._queued

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

    def _batch_done(self, batch: list[Queued], future: asyncio.Future[list[StoreError]]) -> None:
        self._busy -= 1
        self._queued -= len(batch)
        self._queued_bytes -= sum(len(q.sample.body) for q in batch)
        self._changed.set()
        if future.cancelled():
            self._failure = self._failure or asyncio.CancelledError()
            return
        if (exc := future.exception()) is not None:
            self._failure = self._failure or exc
            return
        for err in future.result():
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

"""WriteQueue: batches to the writer threads, in order, with losses reported before a batch is done."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from flowdc.ledger import Record
from flowdc.write_queue import INLINE_BLOCK, WriteQueue
from flowdc.writers.base import StoredSample, StoreError


def sample(i: int, size: int = 1) -> StoredSample:
    return StoredSample(Record(i, f"{i:09d}", f"http://h/{i}", "ok"), b"x" * size, ".png", {})


class Recorder:
    """A writer that records what it got, in which thread, and in how many calls' company."""

    def __init__(self, fail_rows: frozenset[int] = frozenset(), crash_row: int | None = None, delay_s: float = 0.0):
        self.rows: list[int] = []
        self.threads: set[str] = set()
        self.fail_rows = fail_rows
        self.crash_row = crash_row
        self.delay_s = delay_s
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()

    def write(self, s: StoredSample) -> None:
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            time.sleep(self.delay_s)
            self.threads.add(threading.current_thread().name)
            if s.record.row == self.crash_row:
                raise RuntimeError("writer bug")
            if s.record.row in self.fail_rows:
                raise StoreError(OSError("disk full"), [s.record])
            with self.lock:
                self.rows.append(s.record.row)
        finally:
            with self.lock:
                self.active -= 1


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


class CountingPool(ThreadPoolExecutor):
    """Counts the hops to a thread."""

    submitted = 0

    def submit(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.submitted += 1
        return super().submit(*args, **kwargs)


def test_samples_reach_the_writer_in_order_in_few_batches() -> None:
    rec = Recorder()
    done: list[int] = []
    pool = CountingPool(1, thread_name_prefix="w")

    async def main() -> None:
        q = WriteQueue(rec.write, pool, lanes=1, on_error=lambda e: None, max_batch=64, linger_s=0.01)
        for i in range(500):
            await q.put(sample(i), lambda i=i: done.append(i))
        await q.drain()
        assert q.queued == 0

    with pool:
        run(main())
    assert rec.rows == list(range(500))
    assert done == list(range(500))
    assert rec.threads and all(t.startswith("w") for t in rec.threads)
    assert pool.submitted <= 500 // 64 + 2, f"{pool.submitted} hops to the thread for 500 samples"


def test_losses_are_reported_before_their_batch_counts_as_done() -> None:
    rec = Recorder(fail_rows=frozenset({3, 7}))
    events: list[tuple[str, int]] = []

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            q = WriteQueue(rec.write, pool, lanes=1,
                           on_error=lambda e: events.extend(("lost", r.row) for r in e.records))
            for i in range(10):
                await q.put(sample(i), lambda i=i: events.append(("done", i)))
            await q.drain()

    run(main())
    assert rec.rows == [0, 1, 2, 4, 5, 6, 8, 9]
    for row in (3, 7):
        assert events.index(("lost", row)) < events.index(("done", row))
    assert sorted(r for kind, r in events if kind == "done") == list(range(10))


def test_a_writer_bug_surfaces_from_drain_and_put() -> None:
    rec = Recorder(crash_row=2)

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            q = WriteQueue(rec.write, pool, lanes=1, on_error=lambda e: None)
            for i in range(5):
                await q.put(sample(i), lambda: None)
            with pytest.raises(RuntimeError, match="writer bug"):
                await q.drain()
            with pytest.raises(RuntimeError, match="writer bug"):
                await q.put(sample(9), lambda: None)

    run(main())


@pytest.mark.parametrize(("max_queued", "max_queued_bytes", "size"), [(8, 1 << 20, 1), (1000, 800, 100)],
                         ids=["samples", "bytes"])
def test_put_waits_while_the_writers_are_far_behind(max_queued: int, max_queued_bytes: int, size: int) -> None:
    gate = threading.Event()
    rec = Recorder()

    def slow_write(s: StoredSample) -> None:
        gate.wait(10)
        rec.write(s)

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            q = WriteQueue(slow_write, pool, lanes=1, on_error=lambda e: None, max_queued=max_queued,
                           max_queued_bytes=max_queued_bytes, min_batch=1)
            for i in range(8):
                await q.put(sample(i, size), lambda: None)
            blocked = asyncio.create_task(q.put(sample(8, size), lambda: None))
            await asyncio.sleep(0.2)
            assert not blocked.done() and q.queued == 8
            gate.set()
            await asyncio.wait_for(blocked, 5)
            await q.drain()

    run(main())
    assert rec.rows == list(range(9))


def test_a_sample_larger_than_the_byte_bound_still_goes_through() -> None:
    rec = Recorder()

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            q = WriteQueue(rec.write, pool, lanes=1, on_error=lambda e: None, max_queued_bytes=10, min_batch=1)
            for i in range(3):
                await asyncio.wait_for(q.put(sample(i, 50), lambda: None), 5)
            await q.drain()

    run(main())
    assert rec.rows == [0, 1, 2]


def test_lanes_write_batches_side_by_side() -> None:
    rec = Recorder(delay_s=0.01)

    async def main() -> None:
        with ThreadPoolExecutor(4) as pool:
            q = WriteQueue(rec.write, pool, lanes=4, on_error=lambda e: None, min_batch=8)
            for i in range(64):
                await q.put(sample(i), lambda: None)
            await q.drain()

    run(main())
    assert sorted(rec.rows) == list(range(64))
    assert rec.max_active > 1


def test_a_small_batch_lingers_only_while_more_samples_can_come() -> None:
    rec = Recorder()
    coming = [True]

    async def main() -> tuple[float, float]:
        with ThreadPoolExecutor(1) as pool:
            q = WriteQueue(rec.write, pool, lanes=1, on_error=lambda e: None, linger_s=0.5,
                           more_coming=lambda: coming[0])
            done = asyncio.Event()
            t0 = time.monotonic()
            await q.put(sample(0), done.set)
            await done.wait()
            lingered = time.monotonic() - t0
            coming[0] = False  # the run's last sample: nothing can keep it company
            done.clear()
            t0 = time.monotonic()
            await q.put(sample(1), done.set)
            await done.wait()
            return lingered, time.monotonic() - t0

    lingered, last = run(main())
    assert lingered >= 0.45
    assert last < 0.25
    assert rec.rows == [0, 1]


def test_inline_samples_are_written_on_the_event_loop_in_order_with_losses_first() -> None:
    rec = Recorder(fail_rows=frozenset({3}))
    events: list[tuple[str, int]] = []
    pool = CountingPool(1, thread_name_prefix="w")

    async def main() -> None:
        q = WriteQueue(rec.write, pool, lanes=1, inline_max_s=1.0, min_batch=8,
                       on_error=lambda e: events.extend(("lost", r.row) for r in e.records))
        for i in range(300):
            await q.put(sample(i), lambda i=i: events.append(("done", i)))
            assert q.queued < 8  # a batch is written as soon as it is full, before put() returns
        await q.drain()
        assert q.inline and q.inline_cost_s is not None and q.inline_cost_s < 1.0

    with pool:
        run(main())
    assert rec.rows == [i for i in range(300) if i != 3]
    assert rec.threads == {threading.main_thread().name}
    assert pool.submitted == 0
    assert events.index(("lost", 3)) < events.index(("done", 3))


def test_inline_writes_that_prove_slow_go_to_the_threads() -> None:
    rec = Recorder(delay_s=0.002)
    pool = CountingPool(1, thread_name_prefix="w")

    async def main() -> None:
        q = WriteQueue(rec.write, pool, lanes=1, inline_max_s=0.001, on_error=lambda e: None, min_batch=1)
        for i in range(INLINE_BLOCK + 20):
            await q.put(sample(i), lambda: None)
        await q.drain()
        assert not q.inline and q.inline_cost_s is not None and q.inline_cost_s >= 0.002

    with pool:
        run(main())
    assert rec.rows == list(range(INLINE_BLOCK + 20))
    assert pool.submitted > 0 and any(t.startswith("w") for t in rec.threads)


def test_an_inline_writer_bug_surfaces_from_drain_and_put() -> None:
    rec = Recorder(crash_row=2)

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            q = WriteQueue(rec.write, pool, lanes=1, inline_max_s=1.0, on_error=lambda e: None, min_batch=1)
            for i in range(3):
                await q.put(sample(i), lambda: None)
            with pytest.raises(RuntimeError, match="writer bug"):
                await q.put(sample(3), lambda: None)
            with pytest.raises(RuntimeError, match="writer bug"):
                await q.drain()

    run(main())
    assert rec.rows == [0, 1]

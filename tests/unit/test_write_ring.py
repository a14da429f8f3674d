"""The write process's ring (flowdc.write_process.Ring): room is taken in order, freed batch by batch
in the same order, and what is live is never handed out twice."""

from __future__ import annotations

import random

from flowdc.write_process import Ring


def test_room_is_taken_in_order_and_wraps_once_the_oldest_batch_is_free() -> None:
    ring = Ring(100)
    assert [ring.take(30), ring.take(30)] == [0, 30]
    ring.close_batch()
    assert ring.take(30) == 60
    ring.close_batch()
    assert ring.take(30) is None  # 10 left at the end, the front still live
    ring.free_batch()  # the first batch (0-60) is answered
    assert ring.take(30) == 0  # wraps: the 10 bytes at the end are left as a gap
    assert ring.take(30) == 30
    assert ring.take(1) is None  # [60, 90) is still live
    ring.close_batch()
    ring.free_batch()
    ring.free_batch()
    assert ring.used == 0
    assert ring.take(100) == 0  # empty: it starts over from the front


def test_a_body_larger_than_the_ring_or_the_room_left_gets_none_and_takes_nothing() -> None:
    ring = Ring(64)
    assert ring.take(65) is None
    assert ring.take(0) == 0 and ring.used == 0  # an empty body needs no room
    assert ring.take(40) == 0
    assert ring.take(30) is None
    assert (ring.head, ring.used) == (40, 40)


def test_live_room_never_overlaps_over_many_random_batches() -> None:
    """Against a model that tracks every live byte: whatever is handed out is free at that moment."""
    rng = random.Random(7)
    ring = Ring(1000)
    live: list[list[tuple[int, int]]] = []  # spans per unanswered batch, oldest first
    batch: list[tuple[int, int]] = []
    for _ in range(5000):
        if live and rng.random() < 0.3:
            live.pop(0)
            ring.free_batch()
        n = rng.choice((0, 1, 50, 120, 333))
        at = ring.take(n)
        if at is not None and n:
            taken = set(range(at, at + n))
            assert at + n <= ring.size
            assert not any(taken & set(range(a, b)) for spans in [*live, batch] for a, b in spans)
            batch.append((at, at + n))
        if rng.random() < 0.4:
            ring.close_batch()
            live.append(batch)
            batch = []
    ring.close_batch()
    for _ in range(len(live) + 1):
        ring.free_batch()
    assert ring.used == 0

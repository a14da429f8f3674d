"""flowdc.deadlines: total timeouts for many requests by one loop timer, on a real event loop."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import pytest

from flowdc import deadlines as deadlines_module
from flowdc.deadlines import Deadlines, deadlines


async def request(clock: Deadlines, seconds: float, lasts: float) -> str:
    """A stand-in for a request: the way flowdc.fetch.exchange uses its deadline."""
    deadline = clock.start(seconds)
    try:
        await asyncio.sleep(lasts)
        return "done"
    except asyncio.CancelledError:
        if not deadline.absorbs():
            raise
        return "timed out"
    finally:
        clock.end(deadline)


def test_many_requests_arm_one_timer_and_only_the_late_ones_are_cancelled() -> None:
    async def go() -> tuple[list[str], list[float], float, int]:
        loop = asyncio.get_running_loop()
        armed: list[float] = []
        call_at = loop.call_at

        def counting_call_at(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
            if getattr(callback, "__self__", None) is clock:  # not the stand-in requests' own sleeps
                armed.append(when)
            return call_at(when, callback, *args, **kwargs)

        loop.call_at = counting_call_at  # type: ignore[method-assign]
        clock = Deadlines(loop)
        started = time.monotonic()
        quick = [request(clock, 0.3, 0.01 * (i % 5)) for i in range(200)]
        results = await asyncio.gather(*quick, request(clock, 0.3, 30.0), request(clock, 0.5, 30.0))
        return results, armed, time.monotonic() - started, len(clock)

    results, armed, took, left_open = asyncio.run(go())
    assert results[:200] == ["done"] * 200
    assert results[200:] == ["timed out", "timed out"]
    assert 0.45 <= took < 2.0  # the 0.5-s deadline, not the 30-s sleep
    # One timer for the first deadline, one more for the 0.5-s request left after it fired: not 202.
    assert len(armed) <= 3
    assert left_open == 0


def test_a_shorter_deadline_entered_later_rearms_the_timer() -> None:
    async def go() -> tuple[list[str], float]:
        clock = Deadlines(asyncio.get_running_loop())
        started = time.monotonic()
        long_one = asyncio.create_task(request(clock, 20.0, 30.0))
        await asyncio.sleep(0)  # entered first, with the later deadline
        short = await request(clock, 0.1, 30.0)
        took = time.monotonic() - started
        long_one.cancel()
        with pytest.raises(asyncio.CancelledError):
            await long_one
        return [short], took

    results, took = asyncio.run(go())
    assert results == ["timed out"] and took < 5.0


def test_a_task_cancelled_from_outside_stays_cancelled_even_when_its_deadline_fires_too() -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        clock = Deadlines(loop)
        task = asyncio.create_task(request(clock, 0.1, 30.0))
        await asyncio.sleep(0)
        loop.call_at(loop.time() + 0.1, task.cancel)  # due with the deadline, before the task runs again
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(clock) == 0

    asyncio.run(go())


def test_a_deadline_needs_a_task_and_the_loops_deadlines_go_with_the_loop() -> None:
    async def go() -> list[str]:
        return [await request(deadlines(), 0.05, 1.0), await request(deadlines(), 1.0, 0.0)]

    assert asyncio.run(go()) == ["timed out", "done"]
    gc.collect()
    assert len(deadlines_module._BY_LOOP) == 0  # no closed loop kept alive by its deadlines
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(RuntimeError, match="running task"):
            Deadlines(loop).start(1.0)
    finally:
        loop.close()

"""A host that answers nothing is declared down: the count of unanswered requests, and the scheduler's
hand-out of a down host's rows."""

from __future__ import annotations

import asyncio

import pytest

from flowdc.hosthealth import DOWN_MIN_UNANSWERED, Unanswered
from flowdc.paarc import FixedLimit
from flowdc.scheduler import Job, Scheduler
from flowdc.signals import Signal


def unanswered(*signals: Signal) -> Unanswered:
    count = Unanswered()
    for sent_at, signal in enumerate(signals):
        count.note(signal, float(sent_at))
    return count


def test_down_takes_enough_unanswered_requests_over_long_enough() -> None:
    count = unanswered(*[Signal.TIMEOUT] * DOWN_MIN_UNANSWERED)
    assert count.since == 0.0
    assert count.down(now=30.0, after_s=30.0)
    assert not count.down(now=29.0, after_s=30.0)  # not long enough
    assert not unanswered(*[Signal.TIMEOUT] * (DOWN_MIN_UNANSWERED - 1)).down(now=99.0, after_s=30.0)  # too few
    assert not count.down(now=99.0, after_s=0.0)  # 0: never


@pytest.mark.parametrize("answer", [Signal.OK, Signal.OBJECT_ERROR, Signal.OVERLOAD, Signal.SERVER_ERROR])
def test_any_answer_starts_the_count_again(answer: Signal) -> None:
    count = unanswered(*[Signal.CONN_ERROR] * DOWN_MIN_UNANSWERED, answer, Signal.TIMEOUT)
    assert (count.count, count.since) == (1, DOWN_MIN_UNANSWERED + 1.0)
    assert not count.down(now=99.0, after_s=1.0)


def test_a_request_never_sent_says_nothing_about_the_host() -> None:
    count = unanswered(*[Signal.TIMEOUT] * (DOWN_MIN_UNANSWERED - 1), Signal.NOT_SENT, Signal.TIMEOUT)
    assert count.count == DOWN_MIN_UNANSWERED


def test_a_down_host_hands_out_its_rows_past_its_limit_and_the_others_keep_theirs() -> None:
    async def main() -> None:
        sched = Scheduler(lambda host, now: FixedLimit(2), max_pending=1000, down_after_s=0.01)
        for i in range(20):
            sched.add(Job(i, str(i), f"http://dead/{i}", "dead"))
            sched.add(Job(100 + i, str(100 + i), f"http://up/{i}", "up"))
        for _ in range(DOWN_MIN_UNANSWERED // 2):
            sent = [sched.take_ready() for _ in range(4)]  # two of each host: their limits
            await asyncio.sleep(0.005)  # four rounds: the first unanswered request is 0.02 s old at the end
            for job in sent:
                assert job is not None
                sched.finished(job, Signal.TIMEOUT if job.host == "dead" else Signal.OK, 0.01, None)
        assert sched.is_down("dead") and not sched.is_down("up")
        assert sched.snapshot()["dead"]["state"] == "DOWN"
        taken = [job.host for job in iter(sched.take_ready, None)]
        assert taken.count("dead") == 20 - DOWN_MIN_UNANSWERED  # all that is left, at once
        assert taken.count("up") == 2  # still its limit

    asyncio.run(main())


def test_no_host_is_declared_down_unless_asked() -> None:
    async def main() -> None:
        sched = Scheduler(lambda host, now: FixedLimit(1), max_pending=1000)  # down_after_s 0: never
        for i in range(2 * DOWN_MIN_UNANSWERED):
            sched.add(Job(i, str(i), f"http://dead/{i}", "dead"))
        for _ in range(2 * DOWN_MIN_UNANSWERED):
            job = sched.take_ready()
            await asyncio.sleep(0.002)
            assert job is not None
            sched.finished(job, Signal.TIMEOUT, None, None)
        assert not sched.is_down("dead")

    asyncio.run(main())

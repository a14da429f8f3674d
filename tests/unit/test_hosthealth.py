"""A host that answers nothing is declared down: the count of unanswered requests, and what the
scheduler does with a down host's rows (they wait, one probe at a time asks whether the host is
back, and they are handed out to fail unsent once nothing else is left)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from flowdc import hosthealth
from flowdc.hosthealth import DOWN_MIN_UNANSWERED, PACE_FIRST_S, REFUSED_DOWN_S, Unanswered
from flowdc.paarc import FixedLimit
from flowdc.scheduler import GIVE_UP_AFTERS, Job, Scheduler
from flowdc.signals import Signal


def unanswered(*signals: Signal) -> Unanswered:
    count = Unanswered()
    for sent_at, signal in enumerate(signals):
        count.note(signal, float(sent_at), now=float(sent_at))  # each ends as it is sent
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


@pytest.mark.parametrize(("signals", "slow"), [
    ([Signal.TIMEOUT] * DOWN_MIN_UNANSWERED, True),
    ([Signal.TIMEOUT] * (DOWN_MIN_UNANSWERED - 1) + [Signal.CONN_ERROR], False),
    ([Signal.CONN_ERROR, Signal.OK] + [Signal.TIMEOUT] * DOWN_MIN_UNANSWERED, True),  # the count started again
], ids=["all-timeouts", "one-refused", "after-an-answer"])
def test_a_run_of_timeouts_alone_may_be_a_slow_host(signals: list[Signal], slow: bool) -> None:
    assert unanswered(*signals).all_timed_out is slow


def test_a_run_of_refusals_alone_takes_a_host_as_down_sooner() -> None:
    """A refused connection means nothing listens: no slow host to wait for. A run with a timeout
    in it may be a slow host, and waits the whole host_down_after."""
    refused = unanswered(*[Signal.CONN_ERROR] * DOWN_MIN_UNANSWERED)
    assert refused.down(now=REFUSED_DOWN_S, after_s=60.0)
    assert not refused.down(now=REFUSED_DOWN_S - 1.0, after_s=60.0)
    assert refused.down(now=2.0, after_s=2.0)  # a shorter host_down_after still rules
    assert not refused.down(now=99.0, after_s=0.0)  # 0: never
    mixed = unanswered(Signal.TIMEOUT, *[Signal.CONN_ERROR] * (DOWN_MIN_UNANSWERED - 1))
    assert not mixed.down(now=REFUSED_DOWN_S + 1.0, after_s=60.0)
    assert mixed.down(now=60.0, after_s=60.0)


def test_a_run_long_enough_is_paced_and_the_gap_doubles_only_for_requests_sent_under_it() -> None:
    count = Unanswered()
    for i in range(DOWN_MIN_UNANSWERED - 1):  # all out at once, refused at once
        count.note(Signal.CONN_ERROR, sent_at=0.0, now=0.001 * i)
    assert count.gap == 0.0  # too short a run to say anything
    count.note(Signal.CONN_ERROR, sent_at=0.0, now=0.01)
    assert count.gap == PACE_FIRST_S
    for _ in range(20):  # a busy host's restart: many more that were out when the run began
        count.note(Signal.CONN_ERROR, sent_at=0.0, now=0.02)
    assert count.gap == PACE_FIRST_S
    gaps = []
    now = 0.02
    for _ in range(8):  # one request at a time, each sent a gap after the last one failed
        now += count.gap
        count.note(Signal.CONN_ERROR, sent_at=now, now=now + 0.001, max_gap=3.0)
        gaps.append(count.gap)
    assert gaps == [2 * PACE_FIRST_S, 4 * PACE_FIRST_S, 8 * PACE_FIRST_S, 3.0, 3.0, 3.0, 3.0, 3.0]
    count.note(Signal.OK, sent_at=now, now=now + 0.1)
    assert (count.count, count.gap) == (0, 0.0)


def test_a_request_never_sent_says_nothing_about_the_host() -> None:
    count = unanswered(*[Signal.TIMEOUT] * (DOWN_MIN_UNANSWERED - 1), Signal.NOT_SENT, Signal.TIMEOUT)
    assert count.count == DOWN_MIN_UNANSWERED


def take_all(sched: Scheduler) -> list[Job]:
    return list(iter(sched.take_ready, None))


async def down_beside_up(down_after_s: float = 0.01) -> Scheduler:
    """Host "dead" (limit 2) answers none of DOWN_MIN_UNANSWERED requests over down_after_s, while
    host "up" (limit 2) answers; each has 20 rows."""
    sched = Scheduler(lambda host, now: FixedLimit(2), max_pending=1000, down_after_s=down_after_s)
    for i in range(20):
        sched.add(Job(i, str(i), f"http://dead/{i}", "dead"))
        sched.add(Job(100 + i, str(100 + i), f"http://up/{i}", "up"))
    for _ in range(DOWN_MIN_UNANSWERED // 2):
        sent = take_all(sched)  # two of each host: their limits
        assert len(sent) == 4
        await asyncio.sleep(down_after_s / 2)  # the first unanswered request is old enough at the end
        for job in sent:
            sched.finished(job, Signal.TIMEOUT if job.host == "dead" else Signal.OK, 0.01, None)
            if job.host == "up":
                sched.done(job)
            else:
                sched.retry_later(job, 0.0)
    await asyncio.sleep(0.001)  # the retried jobs are queued again
    return sched


async def silent_host(rows: int, max_pending: int = 1000, retry_delay: float = 0.0) -> Scheduler:
    """Host "dead" (limit 2) with `rows` rows answers none of its requests until it is declared down
    (down_after_s 0.01); each timed-out job is retried after `retry_delay`, as a download does."""
    sched = Scheduler(lambda host, now: FixedLimit(2), max_pending=max_pending, down_after_s=0.01)
    for i in range(rows):
        sched.add(Job(i, str(i), f"http://dead/{i}", "dead"))
    for _ in range(DOWN_MIN_UNANSWERED // 2):
        sent = take_all(sched)
        await asyncio.sleep(0.005)
        for job in sent:
            sched.finished(job, Signal.TIMEOUT, None, None)
            sched.retry_later(job, retry_delay)
        await asyncio.sleep(0.001)
    return sched


def test_a_down_hosts_rows_wait_while_another_host_has_work() -> None:
    async def main() -> None:
        sched = await down_beside_up()
        assert sched.is_down("dead") and not sched.is_down("up")
        assert sched.snapshot()["dead"]["state"] == "DOWN"
        assert len(sched.hosts["dead"].queue) == 20
        sched.close()
        sched.tick()
        assert [job.host for job in take_all(sched)] == ["up", "up"]  # its limit; nothing of the down host

    asyncio.run(main())


def test_a_host_is_taken_as_down_at_the_tick_once_its_first_unanswered_request_is_old_enough() -> None:
    """8 requests went unanswered at once, and the first of them is not yet down_after_s old. The
    host is taken as down at the first tick after that, not when a later request ends (a --timeout
    later, if the requests out to it all time out)."""
    async def main() -> None:
        sched = Scheduler(lambda host, now: FixedLimit(DOWN_MIN_UNANSWERED), max_pending=1000, down_after_s=0.05)
        for i in range(20):
            sched.add(Job(i, str(i), f"http://dead/{i}", "dead"))
        sent = take_all(sched)
        for job in sent:
            sched.finished(job, Signal.TIMEOUT, None, None)
            sched.retry_later(job, 0.0)
        await asyncio.sleep(0.001)
        take_all(sched)  # the next requests go out, and stay out
        sched.tick()
        assert not sched.is_down("dead")  # unanswered, but not for long enough
        await asyncio.sleep(0.06)
        sched.tick()
        assert sched.is_down("dead")

    asyncio.run(main())


def test_rows_waiting_out_a_backoff_when_the_host_goes_down_wait_with_the_rest_at_once() -> None:
    async def main() -> None:
        sched = await silent_host(10, retry_delay=60.0)
        dead = sched.hosts["dead"]
        assert sched.is_down("dead") and not dead.retrying
        assert len(dead.queue) == 10

    asyncio.run(main())


def test_once_only_down_hosts_rows_are_left_they_are_handed_out_to_fail_unsent() -> None:
    async def main() -> None:
        sched = await down_beside_up()
        sched.close()
        while (up := [job for job in take_all(sched) if job.host == "up"]):
            for job in up:
                sched.finished(job, Signal.OK, 0.01, None)
                sched.done(job)
        sched.tick()
        released = take_all(sched)
        assert len(released) == 20 and all(job.host == "dead" and job.unsent for job in released)

    asyncio.run(main())


def test_a_host_down_long_while_its_rows_keep_the_reader_waiting_is_given_up_on() -> None:
    async def main() -> None:
        sched = await silent_host(12, max_pending=12)
        reader = asyncio.create_task(sched.wait_for_room())  # 12 pending: full
        await asyncio.sleep(0)
        sched.tick()
        first = take_all(sched)  # down for less than GIVE_UP_AFTERS x 0.01 s: it waits, a probe at most
        assert len(first) <= 1 and not any(job.unsent for job in first)
        await asyncio.sleep(GIVE_UP_AFTERS * 0.01)
        sched.tick()
        handed = first + take_all(sched)
        assert len(handed) == 12 and sum(job.unsent for job in handed) == 11  # all but one probe
        for job in handed:
            sched.finished(job, Signal.NOT_SENT if job.unsent else Signal.TIMEOUT, None, None)
            sched.done(job)
        await asyncio.wait_for(reader, 1.0)

    asyncio.run(main())


def test_one_probe_at_a_time_asks_until_an_answer_brings_the_host_back() -> None:
    async def main() -> None:
        sched = await down_beside_up(down_after_s=0.02)
        dead = sched.hosts["dead"]
        for answer in (Signal.TIMEOUT, Signal.OK):
            await asyncio.sleep(0.03)  # the probe interval (at most down_after_s)
            probes = [job for job in take_all(sched) if job.host == "dead"]
            assert len(probes) == 1 and not probes[0].unsent  # one request goes out
            sched.finished(probes[0], answer, 0.01 if answer is Signal.OK else None, None)
            if answer is Signal.TIMEOUT:
                assert sched.is_down("dead")
                sched.retry_later(probes[0], 5.0)  # a down host's retry waits for the next probe, not 5 s
                await asyncio.sleep(0.001)
                assert len(dead.queue) == 20
        assert not sched.is_down("dead")
        assert len([job for job in take_all(sched) if job.host == "dead"]) == 2  # its limit again

    asyncio.run(main())


def test_a_probe_that_could_not_be_sent_does_not_stop_the_probes() -> None:
    async def main() -> None:
        sched = await down_beside_up(down_after_s=0.02)
        for _ in range(2):
            await asyncio.sleep(0.03)
            probes = [job for job in take_all(sched) if job.host == "dead"]
            assert len(probes) == 1
            sched.finished(probes[0], Signal.NOT_SENT, None, None)  # e.g. the proxy refused the CONNECT
            sched.retry_later(probes[0], 0.0)
            await asyncio.sleep(0.001)
        assert sched.is_down("dead")

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


def test_a_host_that_refuses_everything_is_asked_one_request_at_a_time_until_it_answers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hosthealth, "PACE_FIRST_S", 0.02)

    async def main() -> None:
        sched = Scheduler(lambda host, now: FixedLimit(DOWN_MIN_UNANSWERED), max_pending=1000, down_after_s=60.0)
        for i in range(50):
            sched.add(Job(i, str(i), f"http://refusing/{i}", "refusing"))

        def refuse(jobs: list[Job]) -> None:
            for job in jobs:
                sched.finished(job, Signal.CONN_ERROR, None, None)
                sched.done(job)

        refuse(take_all(sched))  # its limit's worth, refused at once
        assert take_all(sched) == []  # without a pace the next 8 would go at once, and so on
        sent_at = []
        for _ in range(3):
            while not (jobs := take_all(sched)):
                await asyncio.sleep(0.002)
            assert len(jobs) == 1  # one at a time
            sent_at.append(sched.loop.time())
            refuse(jobs)
        gaps = [b - a for a, b in itertools.pairwise(sent_at)]
        assert gaps[0] >= 0.04 and gaps[1] >= 0.08, gaps  # doubling: 0.02, 0.04, 0.08
        await asyncio.sleep(0.16)
        (job,) = take_all(sched)
        sched.finished(job, Signal.OK, 0.01, None)
        sched.done(job)
        assert len(take_all(sched)) == DOWN_MIN_UNANSWERED  # it answered: its limit again, at once
        assert not sched.is_down("refusing")

    asyncio.run(main())


class PacedLimit(FixedLimit):
    """A fixed limit whose host must also be paced, as PAARC paces a token bucket."""

    def min_gap(self, now: float | None = None) -> float:
        return 0.05


def test_the_end_of_an_unanswered_runs_pace_keeps_the_policys_own_pace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hosthealth, "PACE_FIRST_S", 0.01)

    async def main() -> None:
        sched = Scheduler(lambda host, now: PacedLimit(DOWN_MIN_UNANSWERED), max_pending=1000, down_after_s=60.0)
        for i in range(50):
            sched.add(Job(i, str(i), f"http://bucket/{i}", "bucket"))
        for _ in range(DOWN_MIN_UNANSWERED):  # paced by the policy, refused one after the other
            while not (jobs := take_all(sched)):
                await asyncio.sleep(0.002)
            for job in jobs:
                sched.finished(job, Signal.CONN_ERROR, None, None)
                sched.done(job)
        assert sched.hosts["bucket"].unanswered.gap > 0  # the run is paced now
        while not (jobs := take_all(sched)):
            await asyncio.sleep(0.002)
        (job,) = jobs
        sched.finished(job, Signal.OK, 0.01, None)  # it answers at once: the run is over
        sched.done(job)
        sent_at = job.sent_at
        while not (jobs := take_all(sched)):
            await asyncio.sleep(0.002)
        assert len(jobs) == 1
        assert sched.loop.time() - sent_at >= 0.045  # the policy's gap, not a send at once

    asyncio.run(main())

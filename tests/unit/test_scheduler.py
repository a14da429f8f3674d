"""Scheduler rules that need no network: stalled requests and the host's limit."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import pytest

from flowdc.config import PaarcOptions
from flowdc.paarc import ClientLoad, FixedLimit, policy_factory
from flowdc.scheduler import MIN_STALLED_ROOM, Job, Scheduler, next_paced_send, sleep_noting_lag
from flowdc.signals import Signal


class StallingLimit(FixedLimit):
    """A fixed limit that lets go of requests unanswered for `after` seconds."""

    def __init__(self, concurrency: int, after: float) -> None:
        super().__init__(concurrency)
        self.after = after

    def stall_after(self) -> float:
        return self.after


def jobs(n: int, host: str = "h") -> list[Job]:
    return [Job(i, str(i), f"http://{host}/{i}", host) for i in range(n)]


def take_all(sched: Scheduler) -> list[Job]:
    taken = []
    while (job := sched.take_ready()) is not None:
        taken.append(job)
    return taken


def test_stalled_requests_free_their_slots_up_to_a_bound() -> None:
    async def main() -> None:
        sched = Scheduler(lambda host, now: StallingLimit(2, after=0.02), max_pending=100)
        for job in jobs(30):
            sched.add(job)
        taken = take_all(sched)
        assert len(taken) == 2  # the limit
        host = sched.hosts["h"]
        for _ in range(MIN_STALLED_ROOM):
            await asyncio.sleep(0.04)
            sched.tick()  # the stuck ones stop counting, so two more go out...
            taken += take_all(sched)
        # ... until MIN_STALLED_ROOM requests stall beside the limit
        assert (host.inflight, host.stalled(), len(taken)) == (2, MIN_STALLED_ROOM, MIN_STALLED_ROOM + 2)
        sched.finished(taken[0], Signal.TIMEOUT, None, None)  # a stalled one ends...
        assert (host.inflight, host.stalled()) == (2, MIN_STALLED_ROOM - 1)
        sched.tick()  # ... so one more may stall, and its slot goes to the queue
        assert (host.inflight, host.stalled()) == (1, MIN_STALLED_ROOM)
        assert len(take_all(sched)) == 1
        snap = sched.snapshot()["h"]
        assert (snap["inflight"], snap["stalled"]) == (2, MIN_STALLED_ROOM)

    asyncio.run(main())


def test_a_fixed_limit_never_lets_go_of_a_request() -> None:
    async def main() -> None:
        sched = Scheduler(lambda host, now: FixedLimit(2), max_pending=100)
        assert FixedLimit(2).stall_after() == math.inf
        for job in jobs(5):
            sched.add(job)
        assert len(take_all(sched)) == 2
        await asyncio.sleep(0.05)
        sched.tick()
        assert take_all(sched) == []
        assert sched.hosts["h"].inflight == 2

    asyncio.run(main())


def test_a_retry_goes_ahead_of_its_hosts_queue() -> None:
    """A retried job is the oldest of its host's work: sent last, it would make the run's tail."""
    async def main() -> None:
        sched = Scheduler(lambda host, now: FixedLimit(1), max_pending=100)
        for job in jobs(5):
            sched.add(job)
        first = sched.take_ready()
        assert first is not None and first.row == 0
        sched.finished(first, Signal.OVERLOAD, 0.001, None)
        sched.retry_later(first, 0.01)
        await asyncio.sleep(0.05)
        assert [job.row for job in take_all(sched)] == [0]
        sched.finished(first, Signal.OK, 0.001, None)
        assert sched.take_ready().row == 1

    asyncio.run(main())


def test_each_host_gets_its_budget_share_from_the_policy_factory() -> None:
    """The scheduler tells the factory which host it makes a policy for: a host with half the budget
    gets half the fixed limit, the others all of it."""
    async def main() -> None:
        opts = PaarcOptions(enable_paarc=False, C_init=4)
        sched = Scheduler(policy_factory(opts, budget={"shared": 0.5}), max_pending=100)
        for job in jobs(10, "shared") + jobs(10, "whole"):
            sched.add(job)
        taken = take_all(sched)
        assert sorted(job.host for job in taken) == ["shared"] * 2 + ["whole"] * 4

    asyncio.run(main())


def test_a_blocked_loop_shows_as_lag() -> None:
    """The tick's sleep notes how late the loop woke it: work that blocks the loop is lag."""
    async def main() -> None:
        load = ClientLoad()
        await sleep_noting_lag(0.01, load)
        quiet = load.lag_s
        asyncio.get_running_loop().call_soon(time.sleep, 0.05)  # the loop is busy for 50 ms
        await sleep_noting_lag(0.01, load)
        assert load.lag_s - quiet > 0.3 * 0.035 and load.ticks == 2  # smoothed with alpha 0.3

    asyncio.run(main())


def test_a_stall_shows_before_its_late_tick_runs_and_only_while_a_tick_is_pending() -> None:
    """Replies handled after a stall come before the late tick: its due time tells the stall to
    whoever judges them then. Between ticks (the caller's own work after one) nothing is overdue."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        load = ClientLoad()
        seen: list[float] = []

        def stall_then_look() -> None:
            time.sleep(0.05)  # the loop is held past the tick's due time
            seen.append(load.overdue(loop.time()))

        loop.call_later(0.005, stall_then_look)
        await sleep_noting_lag(0.01, load)
        assert seen and seen[0] > 0.03
        assert load.overdue(loop.time() + 10.0) == 0.0  # no tick pending now

    asyncio.run(main())


def test_pacing_makes_up_a_little_lateness_but_never_bursts_after_idle() -> None:
    gap = 0.1
    assert next_paced_send(10.0, 10.0, gap) == pytest.approx(10.1)  # on time
    assert next_paced_send(10.0, 10.03, gap) == pytest.approx(10.1)  # 30 ms late: made up, the pace holds
    assert next_paced_send(10.0, 10.08, gap) == pytest.approx(10.13)  # at most half a gap is made up
    # After a hold (or an empty queue) the next send waits a whole gap: a host that counts
    # requests strictly refuses a second one that comes sooner.
    assert next_paced_send(10.0, 12.0, gap) == pytest.approx(12.1)


class RecordingLimit(FixedLimit):
    def __init__(self, concurrency: int) -> None:
        super().__init__(concurrency)
        self.seen: list[Signal] = []

    def on_sample(self, now: float, sample: Any) -> None:
        self.seen.append(sample.signal)
        super().on_sample(now, sample)


def test_a_request_that_never_reached_the_host_tells_its_controller_nothing() -> None:
    """DNS failures, refused addresses, untrusted certificates, failed CONNECTs: the slot is freed,
    but the host's controller gets no sample, so none of them can lower its limit."""

    async def main() -> None:
        sched = Scheduler(lambda host, now: RecordingLimit(4), max_pending=100)
        for job in jobs(8):
            sched.add(job)
        host = sched.hosts["h"]
        for job in take_all(sched):
            sched.finished(job, Signal.NOT_SENT, None, None)
        assert host.inflight == 0 and host.policy.seen == []
        for job in take_all(sched):  # the slots came back
            sched.finished(job, Signal.CONN_ERROR, None, None)
        assert host.policy.seen == [Signal.CONN_ERROR] * 4

    asyncio.run(main())


class CountingLoop:
    """The running loop, counting the futures asked of it (a worker's wait for a job is one)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.futures = 0

    def create_future(self) -> asyncio.Future[Any]:
        self.futures += 1
        return self._loop.create_future()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)


def test_a_request_ending_wakes_no_worker_for_the_job_its_own_worker_takes() -> None:
    """A host offered as its request ends gets its next job sent by that request's worker: waking
    a waiting worker for it too (as once, for every request) only sent that one back to waiting."""
    async def main() -> int:
        sched = Scheduler(lambda host, now: FixedLimit(2), max_pending=1000)
        counting = CountingLoop(asyncio.get_running_loop())
        sched.loop = counting  # type: ignore[assignment]
        for job in jobs(200):
            sched.add(job)
        sched.close()
        done = []

        async def worker() -> None:
            while (job := await sched.next_job()) is not None:
                await asyncio.sleep(0)  # the request
                sched.finished(job, Signal.OK, 0.001, None)
                sched.done(job)
                done.append(job)

        await asyncio.gather(*(worker() for _ in range(8)))
        assert len(done) == 200
        return counting.futures

    waits = asyncio.run(main())
    assert waits < 40, waits  # one a request before: 200 and more


@pytest.mark.parametrize("left, held", [(3, True), (2, True), (4, False), (50, False)])
def test_a_host_announcing_no_more_than_its_requests_out_is_held_until_its_reset(left: int, held: bool) -> None:
    """Four requests out; the first reply says `left` more are allowed before the count starts over
    in 2 s. The three still out take three of them: with three or fewer left, anything sent now
    would be refused, so the host waits out the reset; with more, it goes on."""
    async def main() -> None:
        sched = Scheduler(lambda host, now: FixedLimit(4), max_pending=100)
        for job in jobs(10):
            sched.add(job)
        taken = take_all(sched)
        assert len(taken) == 4
        now = sched.loop.time()
        sched.finished(taken[0], Signal.OK, 0.01, None, quota=(left, 2.0))
        hold = sched.hosts["h"].policy.hold_until()
        assert (hold >= now + 2.0) is held and (hold > now) is held
        assert len(take_all(sched)) == (0 if held else 1)

    asyncio.run(main())


def test_an_announced_quota_is_spent_by_the_requests_sent_after_it() -> None:
    """Four out of a limit of eight; a reply says 5 are left. The three still out take three, so
    two more may go, and the host then waits for its count to start over, whatever slots are free.
    Then it gets the whole count the replies showed (6: the 5 left plus the one answered), not its
    limit of 8, until a reply says how many are left."""
    async def main() -> None:
        sched = Scheduler(lambda host, now: FixedLimit(8), max_pending=100)
        for job in jobs(40):
            sched.add(job)
        taken = take_all(sched)
        for job in taken[4:]:
            sched.finished(job, Signal.OK, 0.01, None)
        sched.finished(taken[0], Signal.OK, 0.01, None, quota=(5, 0.2))
        more = take_all(sched)
        assert len(more) == 2 and take_all(sched) == []
        for job in taken[1:4] + more:
            sched.finished(job, Signal.OK, 0.01, None)
        assert take_all(sched) == []  # nothing out, slots free: the count has not started over
        await asyncio.sleep(0.25)
        fresh = take_all(sched)
        assert len(fresh) == 6 and take_all(sched) == []
        sched.finished(fresh[0], Signal.OK, 0.01, None, quota=(9, 1.0))  # 9 left, 5 of them for those out
        assert len(take_all(sched)) == 3  # the limit's free slots

    asyncio.run(main())

"""The one request loop that `download` and `size` share: a scheduler, one HTTP session, N workers
and a ticker.

The command brings what differs: how rows come in (`feed`), the request for one job (`request`,
e.g. fetch.fetch_one), what to do with its outcome (`settle`: store, retry or record it) and what
to do every tick. Politeness (per-host limits, holds, pacing) lives in the scheduler and the
policies, so both commands are exactly as polite.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, TypeVar

import aiohttp

from flowdc.fetch import Outcome, make_session
from flowdc.hosthealth import HOST_DOWN
from flowdc.paarc import ClientLoad, policy_factory
from flowdc.scheduler import Job, Scheduler, sleep_noting_lag
from flowdc.signals import Signal

TICK_S = 0.1
OutcomeT = TypeVar("OutcomeT", bound=Outcome)


class RequestLoop(Generic[OutcomeT]):
    """Build inside the event loop that runs it (the scheduler binds to that loop)."""

    def __init__(self, opts: Any, concurrency: int, outcome_type: type[OutcomeT],
                 budget: Mapping[str, float] | None = None) -> None:
        """opts: the command's config (PAARC knobs and network options); outcome_type: what `request`
        returns (the outcome of a row whose host is down is made from it)."""
        self.opts = opts
        self.concurrency = concurrency
        self.outcome_type = outcome_type
        self.client_load = ClientLoad()  # shared by every host's policy: the client's own lag
        # Read ahead well past the global bound so a slow host's backlog does not starve the others.
        read_ahead = max(20 * concurrency, 50_000)
        self.scheduler = Scheduler(policy_factory(opts, budget=budget, client=self.client_load), max_pending=read_ahead,
                                   down_after_s=opts.host_down_after)

    async def run(self, feed: Callable[[], Awaitable[None]],
                  request: Callable[[aiohttp.ClientSession, Job], Awaitable[OutcomeT]],
                  settle: Callable[[Job, OutcomeT], Awaitable[None]],
                  on_tick: Callable[[], Awaitable[None]] | None = None,
                  stop: asyncio.Event | None = None) -> bool:
        """Run until every job is settled, or `stop` is set; True when stopped. `feed` adds jobs
        and must close the scheduler when done; `settle` must retry or finish (scheduler.done) each job."""
        tasks: list[asyncio.Task[Any]] = []
        async with make_session(self.concurrency, net=self.opts) as session:
            try:
                reader = asyncio.create_task(feed())
                workers = [asyncio.create_task(self._worker(session, request, settle))
                           for _ in range(self.concurrency)]
                ticker = asyncio.create_task(self._tick(on_tick))
                tasks = [reader, *workers, ticker]
                all_work = asyncio.gather(reader, *workers)
                # Stopped, the workers are cancelled and this future holds their CancelledError: marked
                # retrieved here, or asyncio logs it with a traceback after the run said why it stopped.
                all_work.add_done_callback(_retrieve)
                if stop is None:
                    await all_work
                    return False
                stopper = asyncio.create_task(stop.wait())
                tasks.append(stopper)
                finished, _ = await asyncio.wait({all_work, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if stopper in finished:
                    return True
                all_work.result()  # re-raise a reader/worker error
                return False
            finally:
                # Inside the session: a worker must never see it closed (that would read as a failed row).
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _worker(self, session: aiohttp.ClientSession,
                      request: Callable[[aiohttp.ClientSession, Job], Awaitable[OutcomeT]],
                      settle: Callable[[Job, OutcomeT], Awaitable[None]]) -> None:
        sched = self.scheduler
        me = asyncio.current_task()
        while (job := await sched.next_job()) is not None:
            job.attempts += 1
            if job.unsent:
                # Not asked again in this run; the ledger keeps the row retryable for the next.
                outcome = self._host_down()
                await asyncio.sleep(0)  # a dead host's thousands of rows must not hold the loop in one go
            else:
                job.worker = me
                try:
                    outcome = await request(session, job)
                except asyncio.CancelledError:
                    if not job.abandoned or me is None:
                        raise
                    me.uncancel()  # the scheduler gave up on this one request, not on the worker
                    outcome = self._host_down()
                job.worker = None
            sched.finished(job, outcome.signal, outcome.ttfb, outcome.retry_after, outcome.fresh_connection,
                           outcome.quota, outcome.via)
            await settle(job, outcome)

    def _host_down(self) -> OutcomeT:
        return self.outcome_type(Signal.NOT_SENT, reason=HOST_DOWN, retryable=True, retry_now=False)

    async def _tick(self, on_tick: Callable[[], Awaitable[None]] | None) -> None:
        while True:
            await sleep_noting_lag(TICK_S, self.client_load)
            self.scheduler.tick()
            if on_tick is not None:
                await on_tick()


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()

"""Per-host queues and limits under one global bound.

Workers ask for the next job; they get one from a host that has work, is under its limit and is
not on hold, in round-robin order. A saturated or held host simply is not offered, so it never
holds a worker that another host could use (no head-of-line blocking). Retries wait on a timer,
not in a worker. A host's policy (fixed or PAARC) is created when the host is first seen and
dropped once the host has been idle for a while, so a manifest with a million hosts stays cheap.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from flowdc.hosthealth import DOWN_PROBE_S, Unanswered
from flowdc.paarc import ClientLoad, HostLimit
from flowdc.signals import Sample, Signal

log = logging.getLogger(__name__)

IDLE_EVICT_S = 60.0
GIVE_UP_AFTERS = 5  # down this many down_after_s while its rows fill the read-ahead: they fail as they come
MIN_STALLED_ROOM = 8  # stalled requests a host may have beside its limit: the limit, or this if more


@dataclass(slots=True)
class Job:
    row: int
    key: str
    url: str
    host: str
    label: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    url_hash: int = 0
    ident: int | None = None  # the row's identity across runs (flowdc.identity)
    sent_at: float = 0.0
    stalled: bool = False  # unanswered for so long that it no longer counts toward the host's limit
    unsent: bool = False  # handed out to fail without a request: its host is down and was released
    abandoned: bool = False  # out to a down host when nothing else was left: its request is cancelled
    worker: asyncio.Task[Any] | None = None  # the worker that sent it (set by the request loop)


@dataclass(slots=True)
class HostState:
    name: str
    policy: HostLimit
    queue: collections.deque[Job] = field(default_factory=collections.deque)
    inflight: int = 0  # requests that count toward the limit
    sent: dict[int, Job] = field(default_factory=dict)  # every request out, stalled ones included
    retrying: dict[int, tuple[asyncio.TimerHandle, Job]] = field(default_factory=dict)  # jobs waiting to retry
    offered: bool = False  # already in the ready ring
    wake_armed: bool = False  # a timer will re-offer it when its hold ends
    idle_since: float | None = None
    next_send: float = 0.0  # pacing: the policy's min_gap after the last send
    last_sent: float = 0.0  # when the last request left
    unanswered: Unanswered = field(default_factory=Unanswered)
    # Declared down (flowdc/hosthealth.py): its jobs wait while one of them at a time asks whether it is
    # back. Released (nothing else is left to do, or it was given up on), they are handed out at once,
    # to fail unsent, probes still going out on their timer.
    down: bool = False
    down_since: float = 0.0
    release: bool = False
    probing: bool = False  # a probe is out
    # An announced quota (flowdc.quota): what it leaves for new requests once those out take
    # theirs, when its count starts over (loop time; inf: not known until the next reply says),
    # and the whole count as far as replies showed it (the largest "left" plus the one answered).
    quota_left: int | None = None
    quota_reset: float = 0.0
    quota_limit: int = 0

    def busy(self) -> bool:
        return bool(self.queue) or bool(self.sent) or bool(self.retrying)

    def stalled(self) -> int:
        return len(self.sent) - self.inflight


def next_paced_send(due: float, now: float, gap: float) -> float:
    """When a paced host may send again, after a send at `now` that was due at `due`.

    Within a stream of sends, up to half a gap of timer and wake-up lateness is made up, or the
    delays would add up to a pace well under the one asked for. After an idle spell (a hold, an
    empty queue) nothing is: a host that counts requests strictly (nginx's limit_req without a
    burst, a token bucket of one) refuses two sends that come closer than its interval.
    """
    late = now - due
    return now + gap - (min(late, gap / 2) if 0 <= late < gap else 0.0)


# A host that only answers after --timeout looks dead: say how to tell (and keep) a slow one.
SLOW_HINT = (". All of them timed out: if the host is only slow, a longer --timeout lets it answer "
             "(--host_down_after 0 never takes a host as down)")


class Scheduler:
    def __init__(self, make_policy: Callable[[str, float], HostLimit], max_pending: int,
                 down_after_s: float = 0.0):
        # make_policy(host, now): the policy for a newly seen host (it may get a share of that host)
        self._make_policy = make_policy
        self.max_pending = max_pending
        self.down_after_s = down_after_s  # a host unanswered this long is declared down (0: never)
        self.down_probe_s = min(DOWN_PROBE_S, down_after_s)
        self.give_up_s = GIVE_UP_AFTERS * down_after_s
        self._down: dict[str, HostState] = {}
        self._reader_waiting = False  # the reader waits for room: only finished jobs make it
        self.hosts: dict[str, HostState] = {}
        # Hosts that answer for others (a redirect from the manifest's host to a CDN, an object
        # store): where each host's requests were last sent on to, and until when a host that
        # answered so named a hold (Retry-After). Every host that leads to it is held with it.
        self._leads_to: dict[str, str] = {}
        self._answering_hold: dict[str, float] = {}
        self._ready: collections.deque[HostState] = collections.deque()
        self._idle: collections.OrderedDict[str, HostState] = collections.OrderedDict()
        self._gone_idle: dict[str, HostState] = {}  # idle since the last snapshot: owed their final figures
        self._active: dict[str, HostState] = {}  # hosts with work; ticks visit only these
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._wake_due = False  # a _wake_for_ready is scheduled
        self._room = asyncio.Event()
        self._room.set()
        self.pending = 0  # jobs queued, in flight or waiting to retry
        self.closed = False  # the reader is done
        self.closed_for_good = False  # the workers are gone; nothing can be added any more
        self.loop = asyncio.get_running_loop()

    # -- the reader side ------------------------------------------------------------------------
    async def wait_for_room(self) -> None:
        while self.pending >= self.max_pending:
            self._room.clear()
            self._reader_waiting = True
            try:
                await self._room.wait()
            finally:
                self._reader_waiting = False

    def add(self, job: Job) -> None:
        self.pending += 1
        self._enqueue(self._host(job.host), job)

    def add_later(self, job: Job, delay: float) -> None:
        """Add a job again after `delay` (a sample the destination lost); counts as pending now."""
        self.pending += 1
        self.retry_later(job, delay)

    def close(self) -> None:
        self.closed = True
        self._maybe_finish()

    # -- the worker side ------------------------------------------------------------------------
    async def next_job(self) -> Job | None:
        """The next job to fetch, or None when every job is finished."""
        while True:
            job = self.take_ready()
            if job is not None:
                return job
            if self.closed and self.pending == 0:
                return None
            fut = self.loop.create_future()
            self._waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if not fut.done():
                    fut.cancel()
                raise

    def take_ready(self) -> Job | None:
        """The next job that may be sent right now, or None; never waits (next_job() does)."""
        while self._ready:
            host = self._ready.popleft()
            host.offered = False
            if not self._eligible(host):
                continue
            job = host.queue.popleft()
            host.inflight += 1
            job.sent_at = host.last_sent = now = self.loop.time()
            host.sent[id(job)] = job
            job.unsent = False
            if host.down:
                if host.probing or now < host.next_send:
                    job.unsent = True  # only a released host's jobs get here
                else:
                    host.probing = True
                    host.next_send = now + self.down_probe_s
            elif (gap := max(host.policy.min_gap(now), host.unanswered.gap)) > 0:
                host.next_send = next_paced_send(host.next_send, now, gap)
                if self.closed:
                    host.policy.rows_left(len(host.queue) + len(host.retrying))
            if host.quota_left is not None:
                if now >= host.quota_reset:  # a new count: the whole quota, until a reply says more
                    host.quota_left, host.quota_reset = host.quota_limit, math.inf
                host.quota_left -= 1
            self._offer(host)  # back of the ring if it can take more: round-robin between hosts
            return job
        return None

    def finished(self, job: Job, signal: Signal, ttfb: float | None, retry_after: float | None,
                 fresh_connection: bool = False, quota: tuple[int, float] | None = None,
                 via: str | None = None) -> None:
        """A request ended; the caller then either retries the job or records it as final. `quota`
        is what the host announced is left of its count, and when that starts over (flowdc.quota);
        `via`, the host that answered when redirects led away from the one asked."""
        host = self.hosts[job.host]
        if via is not None:
            self._note_answering_host(job.host, via, retry_after)
        elif signal is not Signal.NOT_SENT and self._leads_to:
            self._leads_to.pop(job.host, None)  # answered itself, this time
        if quota is not None:
            # The requests still out take their share of what is left; with nothing over, anything
            # sent now would be refused: the host waits for its count to start over.
            host.quota_limit = max(host.quota_limit, quota[0] + 1)
            host.quota_left, host.quota_reset = quota[0] - (len(host.sent) - 1), self.loop.time() + quota[1]
            if host.quota_left <= 0:
                retry_after = max(retry_after or 0.0, quota[1])
        elif host.quota_reset == math.inf:
            host.quota_left = None  # waiting to hear when the count starts over, and told nothing
        sample = Sample(signal, ttfb, host.inflight, retry_after, fresh_connection, retried=job.attempts > 1)
        del host.sent[id(job)]
        if job.stalled:
            job.stalled = False
        else:
            host.inflight -= 1
        if not job.unsent:
            host.probing = False  # a probe that never left (a proxy's refusal, say) ends too
        if signal is not Signal.NOT_SENT:
            now = self.loop.time()
            host.policy.on_sample(now, sample)
            silent = host.unanswered
            paced = silent.gap > 0
            silent.note(signal, job.sent_at, now, self.down_probe_s)
            if host.down:  # its probe timer paces it
                if silent.count == 0:
                    self._bring_back(host)
            elif silent.gap > 0:  # one request at a time, further apart with each one unanswered
                host.next_send = max(host.next_send, now + silent.gap)
            elif paced:  # it answered: the unanswered run's pace is over, the policy's own is not
                host.next_send = host.last_sent + host.policy.min_gap(now)
            self._declare_down_if_silent(host, now)
        self._offer(host, soon=True)  # its own worker is about to come back for a job

    def is_down(self, name: str) -> bool:
        host = self.hosts.get(name)
        return host is not None and host.down

    def retry_later(self, job: Job, delay: float) -> None:
        host = self._host(job.host)  # it may have been evicted if the job was done with
        self._active[host.name] = host
        if host.down:
            delay = 0.0  # back in the queue at once: the probe timer paces a down host, not a backoff
        host.retrying[id(job)] = (self.loop.call_later(max(delay, 0.0), self._requeue, job), job)

    def done(self, job: Job) -> None:
        """The job reached a final state (stored, failed or skipped)."""
        self.pending -= 1
        if self.pending < self.max_pending:
            self._room.set()
        host = self.hosts.get(job.host)
        if host is not None and not host.busy():
            self._mark_idle(host)
        self._maybe_finish()

    def tick(self) -> None:
        """Let active hosts' policies update (a limit may have grown), and evict long-idle hosts."""
        now = self.loop.time()
        for host in self.active_hosts():
            host.policy.tick(now)
            self._release_stalled(host, now)
            self._declare_down_if_silent(host, now)
            self._offer(host)
        if self._down and (self.closed or self._reader_waiting) and self._waiting_on_down_hosts() == self.pending:
            # The reader done, the down hosts' rows are all that is left. The reader waiting for the room
            # they hold, only hosts down for long are given up on: a few minutes' outage costs no rows.
            self._release_down_hosts(now, down_for=0.0 if self.closed else self.give_up_s)
            if self.closed:
                self._abandon_down_hosts_requests()
        while self._idle:
            name, host = next(iter(self._idle.items()))
            if host.idle_since is None or now - host.idle_since < IDLE_EVICT_S:
                break
            del self._idle[name]
            if not host.busy():
                del self.hosts[name]
                self._down.pop(name, None)  # seen again later, it is judged afresh

    def active_hosts(self) -> Iterable[HostState]:
        return list(self._active.values())

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Each active host's figures, and once more those of hosts gone idle since the last call:
        their requests since then count too (a run's last round is taken at its end)."""
        now = self.loop.time()
        hosts = {**self._gone_idle, **self._active}
        self._gone_idle = {}
        return {h.name: {**h.policy.snapshot(), "inflight": h.inflight, "stalled": h.stalled(),
                         "queued": len(h.queue), "hold_s": round(max(h.policy.hold_until() - now, 0.0), 3),
                         **({"state": "DOWN"} if h.down else {})}
                for h in hosts.values()}

    # -- internals ------------------------------------------------------------------------------
    def _host(self, name: str) -> HostState:
        host = self.hosts.get(name)
        if host is None:
            host = self.hosts[name] = HostState(name, self._make_policy(name, self.loop.time()))
        elif host.idle_since is not None:
            host.idle_since = None
            self._idle.pop(name, None)
        return host

    def _enqueue(self, host: HostState, job: Job, first: bool = False) -> None:
        if first:
            host.queue.appendleft(job)
        else:
            host.queue.append(job)
        self._active[host.name] = host
        self._offer(host)

    def _requeue(self, job: Job) -> None:
        # A retry goes first: it is older than anything queued, and sent last it would be the
        # run's tail (one unlucky row retried behind a host's whole queue, then backed off again).
        host = self._host(job.host)
        del host.retrying[id(job)]
        self._enqueue(host, job, first=True)

    def _declare_down_if_silent(self, host: HostState, now: float) -> None:
        """Judged as each request ends and at every tick: with every request out for a whole
        --timeout, judging only as one ends came up to a timeout after host_down_after."""
        if not host.down and host.unanswered.down(now, self.down_after_s):
            self._declare_down(host, now)

    def _declare_down(self, host: HostState, now: float) -> None:
        host.down, host.down_since = True, now
        host.next_send = now + self.down_probe_s
        for timer, job in list(host.retrying.values()):  # their backoff is moot now: they wait with the rest
            timer.cancel()
            self._requeue(job)
        self._down[host.name] = host
        silent = host.unanswered
        log.warning("%s answered none of the last %d requests in %.0f s: taken as down. Its rows wait while other "
                    "hosts have work, one request every %.0f s asks whether it is back, and the rows still "
                    "waiting at the end fail as host_down (a later run retries them)%s", host.name,
                    silent.count, now - silent.since, self.down_probe_s,
                    SLOW_HINT if silent.all_timed_out else "")

    def _bring_back(self, host: HostState) -> None:
        host.down = host.release = host.probing = False
        host.next_send = 0.0  # the probe timer's
        self._down.pop(host.name, None)
        log.warning("%s answers again: its rows are fetched again", host.name)

    def _waiting_on_down_hosts(self) -> int:
        """Pending jobs of down hosts: queued, out as probes, or waiting to retry."""
        return sum(len(h.queue) + len(h.sent) + len(h.retrying) for h in self._down.values())

    def _release_down_hosts(self, now: float, down_for: float) -> None:
        """Nothing but down hosts' rows is left (or the reader waits for room they hold): the queued
        rows of hosts down for `down_for` seconds or more are handed out, to fail unsent, and so are
        the rows that come for them later."""
        released = [h for h in self._down.values() if h.queue and not h.release and now - h.down_since >= down_for]
        if not released:
            return
        log.warning("%s: given up on for this run, %d rows fail as host_down",
                    ", ".join(h.name for h in released), sum(len(h.queue) for h in released))
        for host in released:
            host.release = True
            self._offer(host)

    def _abandon_down_hosts_requests(self) -> None:
        """Nothing else is left: the requests still out to down hosts (sent before the host was taken
        as down, or a probe) would each hold the run's end for up to a timeout. Their workers are
        cancelled out of the request, and the jobs fail unsent, as the released rows do."""
        for host in self._down.values():
            for job in host.sent.values():
                if not job.abandoned and not job.unsent and job.worker is not None:
                    job.abandoned = True
                    job.worker.cancel()

    def _note_answering_host(self, asked: str, answered: str, retry_after: float | None) -> None:
        self._leads_to[asked] = answered
        if retry_after:
            until = self.loop.time() + retry_after
            if until > self._answering_hold.get(answered, 0.0):
                self._answering_hold[answered] = until

    def _answering_hold_of(self, host: HostState) -> float:
        """Until when the host that answers for `host` (or `host` itself, when others lead to it) is held."""
        if not self._answering_hold:
            return 0.0
        answered = self._leads_to.get(host.name, host.name)
        return self._answering_hold.get(answered, 0.0)

    def _eligible(self, host: HostState) -> bool:
        if host.release:  # its rows fail unsent: no limit, hold or pace applies
            return bool(host.queue)
        if not host.queue or (host.probing if host.down else host.inflight >= host.policy.limit()):
            return False
        hold = host.next_send if host.down else max(host.policy.hold_until(), host.next_send,
                                                    self._answering_hold_of(host))  # down: the probe timer
        if host.quota_left is not None and host.quota_left <= 0 and not host.down:
            if host.quota_reset == math.inf:
                return False  # spent: its requests' replies say when the count starts over
            hold = max(hold, host.quota_reset)
        if hold > self.loop.time():
            if not host.wake_armed:
                host.wake_armed = True
                self.loop.call_at(hold, self._wake, host)
            return False
        return True

    def _wake(self, host: HostState) -> None:
        host.wake_armed = False
        self._offer(host)

    def _offer(self, host: HostState, soon: bool = False) -> None:
        """Put `host` in the ring if it may be sent a job now, and wake a waiting worker for it:
        at once, or (`soon`) once the running step is over."""
        if not host.offered and self._eligible(host):
            host.offered = True
            self._ready.append(host)
            if not soon:
                self._notify()
            elif not self._wake_due:
                self._wake_due = True
                self.loop.call_soon(self._wake_for_ready)

    def _wake_for_ready(self) -> None:
        """Wake a waiting worker for each host still offered. Offered as a request ended, a host's
        next job is most often taken by that request's own worker before it next waits: a worker
        woken at the offer (one per request) found nothing and went back to waiting."""
        self._wake_due = False
        self._notify(len(self._ready))

    def _release_stalled(self, host: HostState, now: float) -> None:
        """Stop counting requests stuck far past the host's usual latency toward its limit, up to
        a bound: a host where everything stalls still gets a bounded number of connections."""
        stall_s = host.policy.stall_after()
        if host.inflight == 0 or stall_s == math.inf:
            return
        room = max(host.policy.limit(), MIN_STALLED_ROOM) - host.stalled()
        for job in host.sent.values():  # in send order: oldest first
            if room <= 0 or now - job.sent_at <= stall_s:
                break
            if not job.stalled:
                job.stalled = True
                host.inflight -= 1
                room -= 1

    def _notify(self, wanted: float = 1) -> None:
        """Wake the `wanted` longest-waiting workers (math.inf: all of them), skipping any that gave
        up waiting."""
        while wanted and self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                wanted -= 1

    def _maybe_finish(self) -> None:
        if self.closed and self.pending == 0:
            self._notify(math.inf)

    def _mark_idle(self, host: HostState) -> None:
        if self._active.pop(host.name, None) is not None:
            self._gone_idle[host.name] = host
        host.idle_since = self.loop.time()
        self._idle[host.name] = host
        self._idle.move_to_end(host.name)


async def sleep_noting_lag(seconds: float, load: ClientLoad) -> None:
    """Sleep, then note in `load` how late the event loop woke us: its lag."""
    loop = asyncio.get_running_loop()
    due = load.next_due = loop.time() + seconds
    await asyncio.sleep(seconds)
    load.next_due = math.inf  # no tick is pending while the caller works between two (the ledger's flush)
    load.observe(loop.time() - due)

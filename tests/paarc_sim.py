"""A deterministic discrete-event host simulator for PAARC tests.

Virtual clock and an event heap: no I/O, no asyncio, no sleeping. The simulated host is a service
queue: `capacity` parallel servers, each request takes `service_time` (times 1 +/- `jitter`, or a
lognormal factor with mean 1 when `tail_sigma` is set, drawn from a seeded random.Random),
requests beyond the servers wait in FIFO order, and a request that would push the number in the
system (in service + waiting) above the hard cap is answered at once with 429 (optionally
carrying a Retry-After). A host may also count requests per second (`rate_per_s`): a token
bucket of `burst` tokens, and a request that finds it empty is answered at once with 429.

A closed-loop client keeps `controller.limit()` requests in flight, never sends while the
controller's hold is on, spaces its sends by `min_gap()` as the scheduler does, feeds every reply
to `on_sample` (ttfb = send to reply: bodies are tiny), and calls `tick` every `tick_s` virtual
seconds, when it also records one trace row.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import dataclass, field

from flowdc.paarc import HostLimit
from flowdc.scheduler import next_paced_send
from flowdc.signals import Sample, Signal

_DONE, _TICK, _CAPACITY, _WAKE = 0, 1, 2, 3


@dataclass(slots=True)
class HostSpec:
    capacity: int
    service_time: float = 0.05
    jitter: float = 0.1  # service time is uniform in service_time * [1 - jitter, 1 + jitter]
    tail_sigma: float = 0.0  # > 0: service time is lognormal instead (mean service_time, this sigma)
    hard_cap_ratio: float = 2.0  # in-system requests allowed, as a multiple of the current capacity
    retry_after: float | None = None  # sent with every 429
    reject_time: float = 0.001  # a 429 is answered this fast
    object_error_rate: float = 0.0  # share of served replies that are 404s (same service time)
    capacity_changes: tuple[tuple[float, int], ...] = ()  # (virtual time, new capacity)
    rate_per_s: float = 0.0  # > 0: a token bucket that refills this fast...
    burst: int = 1  # ... and holds this many tokens (1: no two requests closer than 1 / rate)
    seed: int = 1

    def hard_cap(self, capacity: int) -> int:
        return max(1, math.floor(self.hard_cap_ratio * capacity))


@dataclass(slots=True)
class TraceRow:
    t: float  # end of this tick period
    limit: int  # limit at the end of the period
    limit_min: int  # lowest and highest limit seen during the period
    limit_max: int
    state: str
    phase: str | None
    inflight: int  # client's requests in flight at the end of the period
    throughput: float  # OK replies per second over the period
    ok: int  # replies in the period, by kind
    n429: int
    requests: int  # requests sent in the period
    intervals: int  # controller intervals closed so far (-1 for a policy that has none)
    capacity: int


@dataclass(slots=True)
class SimResult:
    rows: list[TraceRow] = field(default_factory=list)
    requests: int = 0
    ok: int = 0
    n429: int = 0
    object_errors: int = 0
    send_times: list[float] = field(default_factory=list)  # filled only with record_times
    reject_times: list[float] = field(default_factory=list)  # times 429s reached the client

    @property
    def frac_429(self) -> float:
        return self.n429 / self.requests if self.requests else 0.0


class _Host:
    """The service queue: c servers, FIFO wait, hard cap answered with 429, and a token bucket
    (when rate_per_s is set) whose refusals are answered with 429 too."""

    __slots__ = ("busy", "capacity", "rng", "spec", "stamp", "tokens", "waiting")

    def __init__(self, spec: HostSpec) -> None:
        self.spec = spec
        self.capacity = spec.capacity
        self.busy = 0
        self.waiting: deque[float] = deque()  # send times of queued requests
        self.rng = random.Random(spec.seed)
        self.tokens, self.stamp = float(spec.burst), 0.0

    def take_token(self, now: float) -> bool:
        """True when the rate limit (if any) lets this request in."""
        if self.spec.rate_per_s <= 0:
            return True
        self.tokens = min(float(self.spec.burst), self.tokens + (now - self.stamp) * self.spec.rate_per_s)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    def in_system(self) -> int:
        return self.busy + len(self.waiting)

    def service(self) -> float:
        if self.spec.tail_sigma > 0:  # a long right tail, as real hosts have (cache misses, slow disks)
            sigma = self.spec.tail_sigma
            return self.spec.service_time * self.rng.lognormvariate(-sigma * sigma / 2, sigma)
        j = self.spec.jitter
        return self.spec.service_time * (1.0 + j * (2.0 * self.rng.random() - 1.0))

    def reply_signal(self) -> Signal:
        if self.spec.object_error_rate and self.rng.random() < self.spec.object_error_rate:
            return Signal.OBJECT_ERROR
        return Signal.OK


class Simulation:
    def __init__(self, controller: HostLimit, spec: HostSpec, tick_s: float = 0.1,
                 record_times: bool = False) -> None:
        self.ctl = controller
        self.spec = spec
        self.host = _Host(spec)
        self.tick_s = tick_s
        self.record_times = record_times
        self.now = 0.0
        self.inflight = 0
        self.events: list[tuple[float, int, int, float, Signal | int]] = []
        self._seq = 0
        self._wake_at: float | None = None
        self._next_send = 0.0  # pacing: when min_gap() lets the next request go
        self.result = SimResult()
        self._period = [0, 0, 0]  # ok, 429, requests in the current tick period
        self._lim_lo = self._lim_hi = controller.limit()

    def _push(self, t: float, kind: int, sent: float = 0.0, payload: Signal | int = 0) -> None:
        self._seq += 1
        heapq.heappush(self.events, (t, self._seq, kind, sent, payload))

    # -- the host side ----------------------------------------------------------------------------
    def _arrive(self, sent: float) -> None:
        host = self.host
        if not host.take_token(self.now) or host.in_system() + 1 > self.spec.hard_cap(host.capacity):
            self._push(self.now + self.spec.reject_time, _DONE, sent, Signal.OVERLOAD)
        elif host.busy < host.capacity:
            self._start(sent)
        else:
            host.waiting.append(sent)

    def _start(self, sent: float) -> None:
        self.host.busy += 1
        self._push(self.now + self.host.service(), _DONE, sent, self.host.reply_signal())

    def _free_servers(self) -> None:
        host = self.host
        while host.waiting and host.busy < host.capacity:
            self._start(host.waiting.popleft())

    # -- the client side --------------------------------------------------------------------------
    def _fill(self) -> None:
        while self.inflight < self.ctl.limit():
            hold = max(self.ctl.hold_until(), self._next_send)
            if self.now < hold:
                if self._wake_at is None:  # one pending wake-up; if the hold grew, it re-arms itself
                    self._wake_at = hold
                    self._push(hold, _WAKE)
                return
            gap = self.ctl.min_gap(self.now)
            if gap > 0:
                self._next_send = next_paced_send(self._next_send, self.now, gap)
            self.inflight += 1
            self.result.requests += 1
            self._period[2] += 1
            if self.record_times:
                self.result.send_times.append(self.now)
            self._arrive(self.now)

    def _reply(self, sent: float, signal: Signal) -> None:
        if signal is not Signal.OVERLOAD:
            self.host.busy -= 1
            self._free_servers()
        retry_after = self.spec.retry_after if signal is Signal.OVERLOAD else None
        self.ctl.on_sample(self.now, Sample(signal, self.now - sent, self.inflight, retry_after))
        self.inflight -= 1
        self._count(signal)
        self._note_limit()
        self._fill()

    def _count(self, signal: Signal) -> None:
        res = self.result
        if signal is Signal.OK:
            res.ok += 1
            self._period[0] += 1
        elif signal is Signal.OVERLOAD:
            res.n429 += 1
            self._period[1] += 1
            if self.record_times:
                res.reject_times.append(self.now)
        elif signal is Signal.OBJECT_ERROR:
            res.object_errors += 1

    def _note_limit(self) -> None:
        lim = self.ctl.limit()
        self._lim_lo = min(self._lim_lo, lim)
        self._lim_hi = max(self._lim_hi, lim)

    def _tick(self) -> None:
        self.ctl.tick(self.now)
        self._note_limit()
        self._record_row()
        self._push(self.now + self.tick_s, _TICK)
        self._fill()

    def _record_row(self) -> None:
        snap = self.ctl.snapshot()
        phase = snap.get("phase")
        self.result.rows.append(TraceRow(
            t=self.now, limit=self.ctl.limit(), limit_min=self._lim_lo, limit_max=self._lim_hi,
            state=str(snap["state"]), phase=None if phase is None else str(phase),
            inflight=self.inflight, throughput=self._period[0] / self.tick_s, ok=self._period[0],
            n429=self._period[1], requests=self._period[2], intervals=int(snap.get("intervals", -1) or 0),
            capacity=self.host.capacity,
        ))
        self._period = [0, 0, 0]
        self._lim_lo = self._lim_hi = self.ctl.limit()

    def _set_capacity(self, capacity: int) -> None:
        self.host.capacity = capacity
        self._free_servers()

    def run(self, duration: float) -> SimResult:
        for t, cap in self.spec.capacity_changes:
            self._push(t, _CAPACITY, 0.0, cap)
        self._push(self.tick_s, _TICK)
        self._fill()
        while self.events and self.events[0][0] <= duration:
            self.now, _, kind, sent, payload = heapq.heappop(self.events)
            if kind == _DONE:
                assert isinstance(payload, Signal)
                self._reply(sent, payload)
            elif kind == _TICK:
                self._tick()
            elif kind == _CAPACITY:
                assert isinstance(payload, int)
                self._set_capacity(payload)
            else:
                self._wake_at = None
                self._fill()
        return self.result


def simulate(controller: HostLimit, spec: HostSpec, duration: float, tick_s: float = 0.1,
             record_times: bool = False) -> SimResult:
    """Run one host against one controller for `duration` virtual seconds."""
    return Simulation(controller, spec, tick_s, record_times).run(duration)

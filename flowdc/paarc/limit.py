"""The seam between the scheduler and a host's concurrency policy (concurrency-limits' `Limit`).

The scheduler asks a policy how many requests may be in flight, whether the host is on hold and
how far apart sends must be, and tells it about each finished request. `FixedLimit` lives here
beside the protocol, with what every policy shares (counters, the client's own load); the
adaptive one is `controller.PaarcController`. All pure: the clock is passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

from flowdc.signals import Sample, Signal


class HostLimit(Protocol):
    def limit(self) -> int: ...

    def hold_until(self) -> float: ...

    def min_gap(self, now: float | None = None) -> float:
        """Seconds from a send at `now` to the next one to this host (0: no pacing)."""
        ...

    def stall_after(self) -> float:
        """Seconds after which a request still unanswered stops counting toward limit() (inf: never)."""
        ...

    def rows_left(self, left: int) -> None:
        """The manifest is read: `left` rows of this host remain (told as a paced host sends)."""
        ...

    def on_sample(self, now: float, sample: Sample) -> None: ...

    def tick(self, now: float) -> None: ...

    def snapshot(self) -> dict[str, float | int | str | None]: ...


@dataclass(slots=True)
class HostCounters:
    """Cheap running totals per host, shared by every policy for telemetry and the overview."""

    requests: int = 0
    ok: int = 0
    overload: int = 0  # 429/503
    server_errors: int = 0
    timeouts: int = 0
    conn_errors: int = 0
    object_errors: int = 0

    def count(self, signal: Signal) -> None:
        self.requests += 1
        match signal:
            case Signal.OK:
                self.ok += 1
            case Signal.OVERLOAD:
                self.overload += 1
            case Signal.SERVER_ERROR:
                self.server_errors += 1
            case Signal.TIMEOUT:
                self.timeouts += 1
            case Signal.CONN_ERROR:
                self.conn_errors += 1
            case Signal.OBJECT_ERROR:
                self.object_errors += 1

    def as_dict(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "ok": self.ok,
            "n_429_503": self.overload,
            "n_5xx": self.server_errors,
            "n_timeouts": self.timeouts,
            "n_conn_errors": self.conn_errors,
            "n_object_errors": self.object_errors,
        }


LOOP_LAG_ALPHA = 0.3  # smoothing of the event loop's lag over ticks
LOOP_BUSY_LAG_S = 0.008  # a 0.1 s timer firing this late (smoothed): the loop is saturated


class ClientLoad:
    """How late the downloader's own event loop runs, from how late its periodic timer fires.

    Shared by every host's policy. When the loop is saturated, the client is the bottleneck: the
    latency every host shows includes our own queue, and more requests in flight lengthen it. (They
    need not slow the run: on the realistic bench 64 a host ran faster than 8, as each pass of the
    loop served more replies; see docs/benchmarks.md.)
    """

    __slots__ = ("busy_ticks", "lag_s", "next_due", "ticks")

    def __init__(self) -> None:
        self.lag_s = 0.0
        self.ticks = self.busy_ticks = 0
        self.next_due = math.inf  # when the next tick is due (loop time)

    def overdue(self, now: float) -> float:
        """How late the next tick already is at `now`: a stall the ticks have yet to see. The replies
        that waited out a stall of our loop (a shard's commit held it 150-200 ms) are handled
        before the late tick is, and each host would judge their latency as its own."""
        return max(0.0, now - self.next_due)

    def observe(self, lag_s: float) -> None:
        """One tick came `lag_s` seconds after it was due."""
        self.lag_s += LOOP_LAG_ALPHA * (max(lag_s, 0.0) - self.lag_s)
        self.ticks += 1
        self.busy_ticks += self.busy

    @property
    def busy(self) -> bool:
        return self.lag_s > LOOP_BUSY_LAG_S

    @property
    def busy_share(self) -> float:
        """Share of the run so far in which the client was the bottleneck."""
        return self.busy_ticks / self.ticks if self.ticks else 0.0


@dataclass(slots=True)
class FixedLimit:
    """A constant per-host limit (PAARC disabled). Retry-After still holds the host."""

    concurrency: int
    _hold_until: float = 0.0
    counters: HostCounters = field(default_factory=HostCounters)

    def limit(self) -> int:
        return self.concurrency

    def hold_until(self) -> float:
        return self._hold_until

    def min_gap(self, now: float | None = None) -> float:
        return 0.0

    def stall_after(self) -> float:
        return math.inf  # a fixed limit means exactly that many connections, stalled or not

    def rows_left(self, left: int) -> None:
        pass  # never paced

    def on_sample(self, now: float, sample: Sample) -> None:
        self.counters.count(sample.signal)
        if sample.retry_after is not None:
            self._hold_until = max(self._hold_until, now + sample.retry_after)

    def tick(self, now: float) -> None:
        return None

    def snapshot(self) -> dict[str, float | int | str | None]:
        return {"state": "FIXED", "limit": self.concurrency, **self.counters.as_dict()}

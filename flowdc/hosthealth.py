"""Telling a host that answers nothing from one that is slow, so a run stops waiting on a dead host.

A host that is down (blackholed, firewalled, gone) leaves every request to time out. Its controller
backs off to C_min, and its rows then drain at C_min requests per timeout, each tried several
times: 2,000 rows behind a 30-s timeout would take a day. A host that answered none of at least
DOWN_MIN_UNANSWERED requests in a row, the first of them sent `down_after_s` or more ago, is
declared down. The scheduler then keeps its rows waiting while other hosts have work, sends one of
them now and then to ask whether the host is back, and once nothing else is left hands them out to
fail as `host_down` without a request, retryable by a later run. Any answer (an image, a 404, a
429, a 5xx) shows the host is up and starts the count again.

A refused or reset connection fails at once, so a run of them comes as fast as the client can send:
without a pace, four hosts that refused everything were asked 80,000 times in half a minute. Once a
run is DOWN_MIN_UNANSWERED long, the host gets one request at a time, PACE_FIRST_S apart, the gap
doubling with each request sent under it that goes unanswered too, up to the down probe's. And a
refusal leaves nothing to wait for (a host that only times out may be slow): a run with no timeout
in it takes a host as down after REFUSED_DOWN_S, or host_down_after when that is shorter.
"""

from __future__ import annotations

from dataclasses import dataclass

from flowdc.signals import Signal

HOST_DOWN = "host_down"  # the ledger's reason for a row not sent because its host was declared down
UNANSWERED = frozenset((Signal.TIMEOUT, Signal.CONN_ERROR))  # no reply at all: timed out, refused, reset
DOWN_MIN_UNANSWERED = 8  # unanswered requests in a row before a host may be declared down
DOWN_PROBE_S = 15.0  # a down host gets one request this often (at most every down_after_s): is it back?
PACE_FIRST_S = 0.25  # the first gap between requests to a host in a run that long (at most the probe's)
REFUSED_DOWN_S = 5.0  # a run of refusals and resets alone (no timeout) takes a host as down this soon


@dataclass(slots=True)
class Unanswered:
    """A host's run of requests that got no reply, and when the first of them was sent."""

    count: int = 0
    since: float = 0.0
    timeouts: int = 0  # of `count`: the ones that timed out (the rest were refused or reset)
    gap: float = 0.0  # seconds between requests while the run lasts (0: not paced)
    gap_from: float = 0.0  # when the gap was last set: requests sent since then count toward the next

    def note(self, signal: Signal, sent_at: float, now: float, max_gap: float = DOWN_PROBE_S) -> None:
        """A request sent at `sent_at` ended at `now`."""
        if signal in UNANSWERED:
            if self.count == 0:
                self.since, self.timeouts = sent_at, 0
            self.count += 1
            self.timeouts += signal is Signal.TIMEOUT
            if self.count >= DOWN_MIN_UNANSWERED:
                self._widen(sent_at, now, max_gap)
        elif signal is not Signal.NOT_SENT:  # a request that never left says nothing about the host
            self.count, self.gap = 0, 0.0

    def _widen(self, sent_at: float, now: float, max_gap: float) -> None:
        # Only a request sent under the current gap doubles it: the many that were out when the run
        # began (a busy host's restart resets them all at once) count as one.
        if self.gap == 0.0:
            self.gap, self.gap_from = min(PACE_FIRST_S, max_gap), now
        elif sent_at >= self.gap_from:
            self.gap, self.gap_from = min(2 * self.gap, max_gap), now

    @property
    def all_timed_out(self) -> bool:
        """Every request of the run timed out: the host may be slow rather than gone."""
        return self.count > 0 and self.timeouts == self.count

    def down(self, now: float, after_s: float) -> bool:
        """Down: at least DOWN_MIN_UNANSWERED requests in a row unanswered over `after_s` seconds
        (0: never), or over REFUSED_DOWN_S when none of them timed out."""
        if after_s <= 0 or self.count < DOWN_MIN_UNANSWERED:
            return False
        return now - self.since >= (after_s if self.timeouts else min(after_s, REFUSED_DOWN_S))

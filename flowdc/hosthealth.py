"""Telling a host that answers nothing from one that is slow, so a run stops waiting on a dead host.

A host that is down (blackholed, firewalled, gone) leaves every request to time out. Its controller
backs off to C_min, and its rows then drain at C_min requests per timeout, each tried several
times: 2,000 rows behind a 30-s timeout would take a day. A host that answered none of at least
DOWN_MIN_UNANSWERED requests in a row, the first of them sent `down_after_s` or more ago, is
declared down. The scheduler then keeps its rows waiting while other hosts have work, sends one of
them now and then to ask whether the host is back, and once nothing else is left hands them out to
fail as `host_down` without a request, retryable by a later run. Any answer (an image, a 404, a
429, a 5xx) shows the host is up and starts the count again.
"""

from __future__ import annotations

from dataclasses import dataclass

from flowdc.signals import Signal

HOST_DOWN = "host_down"  # the ledger's reason for a row not sent because its host was declared down
UNANSWERED = frozenset((Signal.TIMEOUT, Signal.CONN_ERROR))  # no reply at all: timed out, refused, reset
DOWN_MIN_UNANSWERED = 8  # unanswered requests in a row before a host may be declared down


@dataclass(slots=True)
class Unanswered:
    """A host's run of requests that got no reply, and when the first of them was sent."""

    count: int = 0
    since: float = 0.0
    timeouts: int = 0  # of `count`: the ones that timed out (the rest were refused or reset)

    def note(self, signal: Signal, sent_at: float) -> None:
        if signal in UNANSWERED:
            if self.count == 0:
                self.since, self.timeouts = sent_at, 0
            self.count += 1
            self.timeouts += signal is Signal.TIMEOUT
        elif signal is not Signal.NOT_SENT:  # a request that never left says nothing about the host
            self.count = 0

    @property
    def all_timed_out(self) -> bool:
        """Every request of the run timed out: the host may be slow rather than gone."""
        return self.count > 0 and self.timeouts == self.count

    def down(self, now: float, after_s: float) -> bool:
        """Down: at least DOWN_MIN_UNANSWERED requests in a row unanswered over `after_s` seconds
        (0: never)."""
        return after_s > 0 and self.count >= DOWN_MIN_UNANSWERED and now - self.since >= after_s

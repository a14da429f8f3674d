"""PAARC: per-host adaptive concurrency, pure (no I/O; the clock is passed in).

Split as Netflix's concurrency-limits splits a limit from its measurements:
  params.py     PaarcParams: the user's knobs, checked once, shared by every host
  limit.py      HostLimit (the scheduler's seam), FixedLimit, HostCounters, ClientLoad
  window.py     one interval's replies -> Summary (rates, TTFB mean/percentiles, precision)
  pushback.py   the rate-limit memory: what 429/503s taught (a cap, a send pace)
  controller.py PaarcController: the state machine (INIT, STARTUP, PROBE_BW, PROBE_RTT, BACKOFF)
  factory.py    make_host_limit / policy_factory: the policy for a newly seen host, within its share
The algorithm in plain words: docs/paarc.md.
"""

from flowdc.paarc.controller import BACKOFF, INIT, PROBE_BW, PROBE_RTT, STARTUP, PaarcController
from flowdc.paarc.factory import make_host_limit, policy_factory
from flowdc.paarc.limit import ClientLoad, FixedLimit, HostCounters, HostLimit
from flowdc.paarc.params import PaarcParams
from flowdc.paarc.pushback import Pushback
from flowdc.paarc.window import LAT_BUF_CAP

__all__ = [
    "BACKOFF",
    "INIT",
    "LAT_BUF_CAP",
    "PROBE_BW",
    "PROBE_RTT",
    "STARTUP",
    "ClientLoad",
    "FixedLimit",
    "HostCounters",
    "HostLimit",
    "PaarcController",
    "PaarcParams",
    "Pushback",
    "make_host_limit",
    "policy_factory",
]

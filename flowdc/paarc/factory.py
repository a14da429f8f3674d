"""The policy for a newly seen host: PAARC or a fixed limit, within the host's share of the budget."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from flowdc.paarc.controller import PaarcController
from flowdc.paarc.limit import ClientLoad, FixedLimit, HostLimit
from flowdc.paarc.params import PaarcParams


def make_host_limit(opts: Any, host: str, now: float, *, share: float = 1.0,
                    client: ClientLoad | None = None) -> HostLimit:
    """The policy for `host`, first seen at `now`: PAARC, or a fixed C_init when PAARC is disabled.

    `share` (in (0, 1]) is this run's part of a host split over partitions that run at once: its
    C_init and C_max (and so the fixed limit) are scaled by it, never under C_min. A host's pace
    needs no scaling: it is learned from the refusals of this run's own requests (not from a reveal's
    ramp: sibling partitions ramping at once drain the host's bucket together, and each would read
    the rate as its own).
    """
    params = PaarcParams.from_options(opts).scaled(share)
    if opts.enable_paarc:
        return PaarcController(params, now, client, ramp=share >= 1)
    return FixedLimit(params.C_init)


def host_name(netloc: str) -> str:
    """The host of a `host:port` netloc (an IPv6 literal keeps its brackets)."""
    if netloc.startswith("["):
        return netloc[:netloc.find("]") + 1] or netloc
    return netloc.rpartition(":")[0] or netloc


def policy_factory(opts: Any, *, budget: Mapping[str, float] | None = None,
                   client: ClientLoad | None = None) -> Callable[[str, float], HostLimit]:
    """The scheduler's `make_policy(host, now)`: each host gets its share from `budget` (1 if absent)."""
    shares = dict(budget or {})

    def make_policy(host: str, now: float) -> HostLimit:
        # A name without a port stands for every port of that host (plan.json gives netlocs).
        share = shares.get(host, shares.get(host_name(host), 1.0))
        return make_host_limit(opts, host, now, share=share, client=client)

    return make_policy

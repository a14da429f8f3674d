"""When each host of a flowdc run was done, from its ledger: which host bound the makespan.

Every ledger record carries the time it was made (`ts`): a row's latest record is when that row
ended. So a host was done at its rows' last `ts`, and the run's first row tells its start-up. On
polite, say, this shows whether the token bucket's holds, a cap's second hold or the start bound
the run, without tracing it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flowdc.ledger import Ledger
from flowdc.overview import HostGroups
from flowdc.storage import Destination

LISTED = 3  # hosts named per run: the last ones done


@dataclass(frozen=True)
class HostEnds:
    first_row_s: float  # the first row's end, in seconds from the run's start
    done_s: dict[str, float]  # host name -> its last row's end, seconds from the run's start


def host_ends(out: Path, started_at: float, names: Mapping[str, str]) -> HostEnds | None:
    """From the ledger under `out`; `started_at` is the run's start (epoch seconds) and `names` maps
    the ledger's host (host:port) to the bench's name for it. None without a ledger row. Grouped as
    the overview groups its hosts (HostGroups), from the process's start rather than the run's."""
    latest = Ledger(Destination(str(out))).latest(["host", "ts"])
    if latest.num_rows == 0:
        return None
    groups = HostGroups.of(latest, started_at)
    assert groups.done is not None
    done = {names.get(host, host): float(end) for host, end in zip(groups.names, groups.done.tolist(), strict=True)
            if not math.isnan(end)}
    return HostEnds(float(np.min(latest["ts"].to_numpy())) - started_at, done)


def ends_line(run: str, ends: HostEnds, own_ideal_s: Mapping[str, float | None]) -> str:
    """'<run>: first row at 0.52 s; last done (s from start, the host's own held ideal): ...'"""
    last = sorted(ends.done_s.items(), key=lambda kv: -kv[1])[:LISTED]
    named = ", ".join(f"{name} {end:.1f}" + (f" ({own_ideal_s[name]:.1f})" if own_ideal_s.get(name) else "")
                      for name, end in last)
    return (f"{run}: first row at {ends.first_row_s:.2f} s; "
            f"last done (s from its start; the host's own held ideal): {named}")

"""The manager's live line: partitions done/running/waiting, workers, samples/s and MB/s."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


class LiveView:
    def __init__(self, partitions: int, quiet: bool) -> None:
        self._bar = None if quiet else tqdm(total=partitions, desc="distribute", unit="part", file=sys.stderr,
                                            mininterval=0.5, dynamic_ncols=True)
        self.text = ""

    def update(self, *, done: int, running: int, waiting: int, failed: int, workers: int,
               totals: dict[str, Any]) -> None:
        """Refresh the line; `totals` is the collector's merged view (rates over live partitions)."""
        self.text = (f"done={done} running={running} waiting={waiting} failed={failed} workers={workers} "
                     f"ok={int(totals.get('ok', 0))} {totals.get('rate_per_s', 0.0):.0f} img/s "
                     f"{totals.get('mb_per_s', 0.0):.1f} MB/s")
        if self._bar is not None:
            self._bar.n = done + failed
            self._bar.set_postfix_str(self.text, refresh=False)
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

"""Run counters (what a download did so far) and the CLI's progress bar that shows them.

The counters belong to the download; the bar belongs to the process that shows it (the CLI), and
only reads the counters now and then, so a library call never draws anything.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class RunCounters:
    started: float = field(default_factory=time.monotonic)
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    already_done: int = 0
    retries: int = 0
    bytes: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    client_busy_share: float = 0.0  # share of the run the downloader's own event loop lagged

    @property
    def finished(self) -> int:
        return self.ok + self.failed + self.skipped

    def elapsed(self) -> float:
        return max(time.monotonic() - self.started, 1e-9)

    def record(self, status: str, nbytes: int = 0, reason: str | None = None) -> None:
        if status == "ok":
            self.ok += 1
            self.bytes += nbytes
        elif status == "failed":
            self.failed += 1
        else:
            self.skipped += 1
        if reason and status != "ok":
            self.errors[reason] += 1

    def unrecord_ok(self, nbytes: int) -> None:
        """A sample counted as stored was lost by the destination and will be fetched again."""
        self.ok -= 1
        self.bytes -= nbytes

    def skip_done(self, n: int) -> None:
        """Rows a previous run already finished: they count toward the total but are not fetched."""
        self.already_done += n


class ProgressBar:
    """done / failed / rate / MB/s on stderr, redrawn from the counters (at most every 0.5 s)."""

    def __init__(self, desc: str = "download", *, notebook: bool = False):
        # notebook: tqdm.auto draws a widget in Jupyter (plain text elsewhere); the CLI keeps stderr.
        # Imported here, not with the module: a quiet run (a task on a cluster, a bench) draws no
        # bar, and tqdm's import reads its own package metadata, 40-50 ms of a download's start.
        if notebook:
            from tqdm.auto import tqdm as make
        else:
            from tqdm import tqdm as make
        where = {} if notebook else {"file": sys.stderr, "dynamic_ncols": True}
        self._bar = make(total=None, desc=desc, unit="img", mininterval=0.5, smoothing=0.1, **where)

    def show(self, c: RunCounters, total: int | None, hosts_active: int) -> None:
        if total is not None and self._bar.total != total:
            self._bar.total = total
        self._bar.update(c.finished + c.already_done - self._bar.n)
        mb_s = c.bytes / c.elapsed() / 1e6
        text = f"ok={c.ok} failed={c.failed} retries={c.retries} {mb_s:.1f}MB/s hosts={hosts_active}"
        self._bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        self._bar.close()

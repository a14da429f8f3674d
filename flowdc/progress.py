"""Run counters and the progress bar (done / failed / rate / MB/s); silent with --quiet."""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from tqdm import tqdm


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


class Progress:
    def __init__(self, total: int | None, quiet: bool, desc: str = "download"):
        self.counters = RunCounters()
        self._bar = None if quiet else tqdm(total=total, desc=desc, unit="img", file=sys.stderr,
                                            mininterval=0.5, dynamic_ncols=True, smoothing=0.1)

    def record(self, status: str, nbytes: int = 0, reason: str | None = None) -> None:
        c = self.counters
        if status == "ok":
            c.ok += 1
            c.bytes += nbytes
        elif status == "failed":
            c.failed += 1
        else:
            c.skipped += 1
        if reason and status != "ok":
            c.errors[reason] += 1
        if self._bar is not None:
            self._bar.update(1)

    def unrecord_ok(self, nbytes: int) -> None:
        """A sample counted as stored was lost by the destination and will be fetched again."""
        self.counters.ok -= 1
        self.counters.bytes -= nbytes
        if self._bar is not None:
            self._bar.update(-1)

    def skip_done(self, n: int) -> None:
        """Rows a previous run already finished: they count toward the bar but are not fetched."""
        self.counters.already_done += n
        if self._bar is not None and n:
            self._bar.update(n)

    def refresh(self, hosts_active: int) -> None:
        if self._bar is None:
            return
        c = self.counters
        mb_s = c.bytes / c.elapsed() / 1e6
        text = f"ok={c.ok} failed={c.failed} retries={c.retries} {mb_s:.1f}MB/s hosts={hosts_active}"
        self._bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

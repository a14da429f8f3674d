"""Typed host and run snapshots, handed to subscribers and sinks off the download's event loop.

A download publishes, every half second, one HostSnapshot per active host and one RunSnapshot
(and a last RunSnapshot with done=True). `publish` only appends to bounded queues: each consumer
(a subscriber callback or a sink) has a thread of its own, so a slow one drops its own oldest
batches and never slows the download or another consumer.

Sinks share one small interface (write a batch, close): JSONL on any fsspec URL (sinks.py has
them) and an HTTP push to a collector. The line format is `to_dict()`; see docs/telemetry.md.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Protocol

log = logging.getLogger("flowdc.telemetry")

QUEUE_BATCHES = 64  # batches a consumer may fall behind by before its oldest are dropped (~30 s)
CLOSE_WAIT_S = 5.0  # at the end of a run, consumers get this long to catch up, all together


_FIELD_NAMES: dict[type, frozenset[str]] = {}


class _Typed:
    """to_dict()/from_dict() for the snapshot dataclasses: figures a newer writer adds are kept in `extra`."""

    KIND: ClassVar[str]
    extra: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.KIND}
        for f in fields(self):  # type: ignore[arg-type]
            if f.name != "extra":
                d[f.name] = getattr(self, f.name)
        d["t"] = round(d["t"], 3)
        d.update(self.extra)
        return d

    @classmethod
    def _field_names(cls) -> frozenset[str]:
        names = _FIELD_NAMES.get(cls)
        if names is None:  # once per class: a tick may build thousands of snapshots
            names = _FIELD_NAMES[cls] = frozenset(f.name for f in fields(cls) if f.name != "extra")  # type: ignore[arg-type]
        return names

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Any:
        names = cls._field_names()
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names and k != "kind"}
        return cls(**known, extra=extra)


def source_label(doc: Mapping[str, Any]) -> str:
    """Which run and partition a snapshot dict comes from, as one key: `RUN/PART` when it names
    both (a distribute run's tasks share its run id), else whichever it names. Views key their
    latest state by it, so a resubmitted task replaces its lost predecessor's figures and two
    runs' partitions of the same number stay apart."""
    run, part = str(doc.get("run_id") or ""), str(doc.get("partition_id") or "")
    return f"{run}/{part}" if run and part else part or run


@dataclass(slots=True)
class HostSnapshot(_Typed):
    """One host's controller and queue at time t (wall clock, seconds since the epoch)."""

    KIND: ClassVar[str] = "host"
    t: float
    host: str
    run_id: str | None = None
    partition_id: str | None = None
    state: str | None = None  # INIT, STARTUP, PROBE_BW, PROBE_RTT, BACKOFF (PAARC) or FIXED
    phase: str | None = None  # PROBE_BW's cruise / probe_up / drain
    limit: int | None = None  # requests allowed in flight now
    ceiling: float | None = None  # PAARC's estimate of the host's capacity
    inflight: int | None = None  # requests in flight that count toward the limit
    stalled: int | None = None  # requests out so long they no longer count toward it
    queued: int | None = None  # rows waiting for this host
    rtprop_ms: float | None = None
    base_lat_ms: float | None = None  # unloaded mean TTFB PAARC judges against
    p50_ms: float | None = None
    p95_ms: float | None = None
    goodput: float | None = None  # OK replies per second
    hold_until: float | None = None  # the event loop's clock: compare with hold_s instead
    hold_s: float | None = None  # seconds the host is still held (Retry-After, a backoff)
    intervals: int | None = None
    pace_per_s: float | None = None  # a rate-limited host's paced send rate
    cap_seen: int | None = None  # the in-flight level that drew 429s, while remembered
    requests: int | None = None  # the counters below are cumulative since the host was first seen
    ok: int | None = None
    n_429_503: int | None = None
    n_5xx: int | None = None
    n_timeouts: int | None = None
    n_conn_errors: int | None = None
    n_object_errors: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, t: float, host: str, figures: Mapping[str, Any], run_id: str | None,
           partition_id: str | None) -> HostSnapshot:
        return cls.from_dict({**figures, "t": t, "host": host, "run_id": run_id, "partition_id": partition_id})


@dataclass(slots=True)
class RunSnapshot(_Typed):
    """A run's counters at time t: rows this run finished, and whether it is over."""

    KIND: ClassVar[str] = "run"
    t: float
    run_id: str | None = None
    partition_id: str | None = None
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    retries: int = 0
    bytes: int = 0
    already_done: int = 0  # rows an earlier run finished (not fetched again)
    rows_total: int | None = None  # the manifest's rows, when cheap to know (parquet)
    elapsed_s: float = 0.0
    rate_per_s: float = 0.0  # stored samples per second over the run so far
    mb_per_s: float = 0.0
    hosts_active: int = 0
    done: bool = False  # the last snapshot of the run
    interrupted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


Snapshot = HostSnapshot | RunSnapshot
Subscriber = Callable[[Snapshot], None]


def snapshot_from_dict(d: Mapping[str, Any]) -> Snapshot:
    """A JSONL line's dict as a snapshot; lines with no "kind" (files from before it) are host lines."""
    return RunSnapshot.from_dict(d) if d.get("kind") == "run" else HostSnapshot.from_dict(d)


def is_host_line(d: Mapping[str, Any]) -> bool:
    return d.get("kind", "host") == "host" and isinstance(d.get("host"), str) and _finite(d.get("t"))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Sink(Protocol):
    """Where snapshots go. Called from its own thread, one batch (one tick's snapshots) at a time."""

    def write(self, batch: Sequence[Snapshot]) -> None: ...

    def close(self) -> None: ...


class CallbackSink:
    """A subscriber as a sink: the callback gets each snapshot of a batch in order."""

    def __init__(self, callback: Subscriber) -> None:
        self.callback = callback

    def write(self, batch: Sequence[Snapshot]) -> None:
        for snap in batch:
            self.callback(snap)

    def close(self) -> None:
        return None


class _Lane:
    """One consumer on a thread of its own behind a bounded queue. When the consumer falls behind,
    its oldest batches are dropped (the newest state matters most): the publisher never waits."""

    def __init__(self, sink: Sink, maxsize: int) -> None:
        self.sink = sink
        self.maxsize = maxsize
        self.dropped = 0  # batches dropped because the consumer was behind
        self.failures = 0  # batches whose write raised
        self._queue: collections.deque[Sequence[Snapshot]] = collections.deque()
        self._cv = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"flowdc-telemetry-{type(sink).__name__}",
                                        daemon=True)
        self._thread.start()

    def offer(self, batch: Sequence[Snapshot]) -> None:
        with self._cv:
            if self._closing:
                return
            if len(self._queue) >= self.maxsize:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(batch)
            self._cv.notify()

    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    while not self._queue and not self._closing:
                        self._cv.wait()
                    if not self._queue:
                        return
                    batch = self._queue.popleft()
                try:
                    self.sink.write(batch)
                except Exception as exc:  # a consumer's failure is its own: the download goes on
                    self.failures += 1
                    if self.failures == 1:
                        log.warning("telemetry: %s failed: %s: %s", type(self.sink).__name__, type(exc).__name__, exc)
        finally:
            try:
                self.sink.close()
            except Exception as exc:
                log.warning("telemetry: closing %s failed: %s", type(self.sink).__name__, exc)

    def start_closing(self) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify()

    def join(self, deadline: float) -> bool:
        """Wait until the consumer has written what was queued, up to `deadline` (monotonic)."""
        self._thread.join(max(deadline - time.monotonic(), 0.0))
        return not self._thread.is_alive()


class Telemetry:
    """Fan-out of snapshots to subscribers and sinks, each on its own thread.

    `Telemetry(path)` writes JSON lines to a path or fsspec URL; `push_url` also POSTs them to a
    collector. Safe to share between downloads running at once (publish from any thread).
    """

    def __init__(self, path: str | None = None, *, push_url: str | None = None,
                 storage_options: Mapping[str, Any] | None = None, sinks: Iterable[Sink] = (),
                 queue_batches: int = QUEUE_BATCHES) -> None:
        from flowdc.sinks import HttpPushSink, jsonl_sink  # sinks hold the I/O; imported when asked for

        self.queue_batches = queue_batches
        self._lanes: list[_Lane] = []
        self._lock = threading.Lock()
        self._closed = False
        made: list[Sink] = list(sinks)
        if path:
            made.append(jsonl_sink(path, storage_options))
        if push_url:
            made.append(HttpPushSink(push_url))
        for sink in made:
            self.add_sink(sink)

    @property
    def active(self) -> bool:
        """Whether anyone listens: with no consumer a download skips building snapshots."""
        return bool(self._lanes)

    @property
    def dropped(self) -> int:
        return sum(lane.dropped for lane in self._lanes)

    def add_sink(self, sink: Sink) -> Callable[[], None]:
        """Start sending batches to `sink`; returns a function that stops it (and closes the sink)."""
        lane = _Lane(sink, self.queue_batches)
        with self._lock:
            self._lanes.append(lane)
        return lambda: self._remove(lane)

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call `callback(snapshot)` for every snapshot, on a thread of its own; returns an unsubscribe."""
        return self.add_sink(CallbackSink(callback))

    def _remove(self, lane: _Lane) -> None:
        with self._lock:
            if lane not in self._lanes:
                return
            self._lanes.remove(lane)
        lane.start_closing()

    def publish(self, batch: Sequence[Snapshot]) -> None:
        """Hand one tick's snapshots to every consumer; never blocks on them."""
        if not batch:
            return
        for lane in list(self._lanes):
            lane.offer(batch)

    def close(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """Let every consumer write what is queued (up to wait_s in all), then close the sinks.
        A consumer still stuck after that is left to finish on its daemon thread."""
        with self._lock:
            lanes, self._lanes = self._lanes, []
        for lane in lanes:
            lane.start_closing()
        deadline = time.monotonic() + wait_s
        for lane in lanes:
            if not lane.join(deadline):
                log.warning("telemetry: %s did not finish within %.0f s", type(lane.sink).__name__, wait_s)

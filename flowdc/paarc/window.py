"""Measurement windows: one interval's replies in, a summary of what the interval measured out.

An interval closes once it spans its usual length (a few RTprops), holds enough replies and its
mean TTFB is known precisely enough (see docs/paarc.md, "The algorithm in plain words"). A window
keeps running sums and a bounded, systematic subsample of OK latencies: an idle host costs a few
counters, a busy one at most LAT_BUF_CAP floats.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass

from flowdc.signals import Sample, Signal

INTERVAL_RTPROPS = 4.0  # a limit change needs a few round trips to show in latency and rate
MIN_INTERVAL_S = 0.1  # floor for very fast hosts, and the interval length before RTprop is known
MIN_SAMPLES = 8  # fewer samples make percentiles too noisy to act on
TARGET_REL_SE = 0.05  # an interval stays open until its mean TTFB is this precise (relative SE)...
PRECISION_WAIT = 8.0  # ... or this many times its usual span has passed: a noisy host still gets judged
CLEAR_Z = 4.0  # ... or its mean is this many standard errors above the unloaded mean: the verdict is in
MIN_LATENCIES = 4  # OK latencies an interval needs before its percentiles are trusted
LAT_BUF_CAP = 128  # latencies kept per interval (systematic subsample): bounds memory per host
LATENCY_NOISE_FLOOR_S = 0.005  # under this unloaded mean the client's own jitter hides any queue: judge by rate
STALE_SHARE = 0.1  # a drain lasts while more of an interval's replies than this were sent before the cut
FAIL_FRACTION = 0.2  # share of an interval's samples that are timeouts/5xx/resets to mean "host failing"
FAIL_MIN = 3  # ... and at least this many, so one slow object never counts as overload
HOST_FAILURES = frozenset((Signal.TIMEOUT, Signal.SERVER_ERROR, Signal.CONN_ERROR))
SERVED = frozenset((Signal.OK, Signal.OBJECT_ERROR))


@dataclass(slots=True)
class Summary:
    """What one closed interval measured."""

    ok_rate: float  # OK completions per second (goodput)
    served_rate: float  # responses with headers per second (the host did the work)
    mean: float | None  # mean TTFB of OK responses (a 404 may be much faster: keep the mix out)
    p10: float | None  # percentiles of OK TTFB
    p50: float | None
    p95: float | None
    rel_se: float  # standard error of the mean TTFB, relative to the mean
    failing: bool  # timeouts/5xx/resets are a substantial share
    pipe_full: bool  # the limit was actually used (not short of work)
    stale: bool  # many replies were to requests sent before the limit was last lowered
    spans: int  # usual interval lengths this one lasted (more when it waited for a precise mean)
    fresh_share: float = 0.0  # share of its replies that came on a connection opened for them


class Window:
    """Running counts for the current interval, plus a bounded subsample of OK latencies.

    Replies that arrive in the interval's first RTprop were mostly sent under the previous limit,
    so they count for goodput and failures but not for rate or latency ("settling").
    """

    __slots__ = (
        "answered",
        "before_min",
        "before_n",
        "before_sum",
        "cohort_n",
        "cohort_sq",
        "cohort_sum",
        "fails",
        "first",
        "fresh",
        "lat",
        "max_inflight",
        "n",
        "need",
        "ok",
        "seen",
        "served",
        "settle",
        "stale",
        "start",
        "stride",
        "ttfb_sq",
        "ttfb_sum",
    )

    def __init__(self, now: float) -> None:
        self.reset(now, None)

    def reset(self, now: float, rtprop: float | None) -> None:
        self.start = now
        self.settle = rtprop or 0.0  # the same float object as the controller's RTprop: no new allocation
        self.n = self.ok = self.served = self.fails = self.max_inflight = self.seen = self.stale = self.fresh = 0
        self.ttfb_sum = self.ttfb_sq = 0.0
        self.first = 0.0  # arrival of the first settled reply: the rate is measured from there
        self.stride = 1
        self.lat: array[float] | None = None  # allocated on first use: idle hosts stay tiny
        self.need = 0  # > 0: the cohort's mean is known once this many answered (follow_cohort)
        self.answered = 0  # timed replies with headers to requests sent since the interval began
        self.cohort_n = 0  # ... those of them that are OK: the cohort
        self.cohort_sum = self.cohort_sq = 0.0
        self.before_n = 0  # timed OK replies to requests sent before the interval began...
        self.before_sum = 0.0  # ... their latencies' sum...
        self.before_min = math.inf  # ... and the least of them

    def follow_cohort(self, need: int) -> None:
        """`cohort_mean` once `need` of the requests sent since this interval began (its cohort)
        answered with the limit in use. Those are the requests a queue delays first."""
        self.need = need

    def add(self, now: float, s: Sample, timed: bool = True) -> None:
        if self.n == 0 and s.ttfb is not None and now - s.ttfb > self.start:
            # The host sat idle before this request was sent: start the interval at the send, so
            # an idle gap does not dilute the rate.
            self.start = now - s.ttfb
        self.n += 1
        if s.fresh:
            self.fresh += 1
        if s.inflight > self.max_inflight:
            self.max_inflight = s.inflight
        if s.signal in HOST_FAILURES:
            self.fails += 1
        if s.signal is Signal.OK:
            self.ok += 1
        if timed and s.ttfb is not None:
            if now - s.ttfb >= self.start:
                self.answered += 1
                if s.signal is Signal.OK:
                    self.cohort_n += 1
                    self.cohort_sum += s.ttfb
                    self.cohort_sq += s.ttfb * s.ttfb
            elif s.signal is Signal.OK:
                self.before_n += 1
                self.before_sum += s.ttfb
                if s.ttfb < self.before_min:
                    self.before_min = s.ttfb
        if now < self.start + self.settle or s.ttfb is None or s.signal not in SERVED:
            return
        if not self.served:
            self.first = now
        self.served += 1
        if s.signal is Signal.OK and timed:
            self._keep_latency(s.ttfb)

    def _keep_latency(self, ttfb: float) -> None:
        # Keep every stride-th latency; when the buffer fills, drop every other one and double
        # the stride. The buffer stays a systematic sample of the whole interval in LAT_BUF_CAP slots.
        self.seen += 1
        self.ttfb_sum += ttfb
        self.ttfb_sq += ttfb * ttfb
        if (self.seen - 1) % self.stride:
            return
        if self.lat is None:
            self.lat = array("f")
        self.lat.append(ttfb)
        if len(self.lat) >= LAT_BUF_CAP:
            del self.lat[1::2]
            self.stride *= 2

    def due(self, now: float, rtprop: float | None, base_lat: float | None, target: float = TARGET_REL_SE) -> bool:
        """Closed once it spans its usual length and holds MIN_SAMPLES replies, and its mean is
        known to `target` (relative SE) or is clearly above `base_lat` (None: no shortcut)."""
        span = usual_span(rtprop)
        age = now - self.start
        if self.n < MIN_SAMPLES or age < span:
            return False
        if age >= PRECISION_WAIT * span or self.ttfb_sum < LATENCY_NOISE_FLOOR_S * self.seen:
            return True  # waited long enough, or a near host's latency: judged by rate, no precision needed
        rel_se = self.rel_se()
        if rel_se <= target:
            return True
        # Imprecise, but already clearly slower than unloaded (a queue we made): no need to wait.
        return base_lat is not None and self.ttfb_sum > (1 + CLEAR_Z * rel_se) * base_lat * self.seen

    def cohort_mean(self) -> tuple[float, float] | None:
        """The cohort's mean latency and its relative standard error, once `need` of it answered
        with the limit in use (None before)."""
        if not self.need or self.cohort_n < self.need or self.max_inflight + 1 < self.need:
            return None
        return self.cohort_so_far()

    def cohort_so_far(self) -> tuple[float, float] | None:
        """The mean latency and relative standard error of the cohort's replies so far, once
        MIN_SAMPLES answered (None before)."""
        n = self.cohort_n
        if n < MIN_SAMPLES:
            return None
        return self.cohort_sum / n, relative_se(n, self.cohort_sum, self.cohort_sq)

    def failing(self) -> bool:
        """Timeouts, 5xx and resets are a substantial share of the interval's samples."""
        return self.fails >= FAIL_MIN and self.fails >= FAIL_FRACTION * self.n

    def rel_se(self) -> float:
        """Standard error of the mean TTFB, relative to the mean (0 with fewer than 2 latencies)."""
        return relative_se(self.seen, self.ttfb_sum, self.ttfb_sq)

    def _rate(self, now: float) -> float:
        """Replies per second between the first settled reply and now.

        Counting from the first reply, not from a clock edge, keeps the rate honest when replies
        come in waves (synchronised servers): n replies span n - 1 gaps.
        """
        if self.served < 2 or now <= self.first:
            return 0.0
        return (self.served - 1) / (now - self.first)

    def summarize(self, now: float, limit: int) -> Summary:
        dur = max(now - self.start, 1e-9)
        mean = self.ttfb_sum / self.seen if self.seen else None
        lat = sorted(self.lat) if self.lat is not None and len(self.lat) >= MIN_LATENCIES else None
        return Summary(
            ok_rate=self.ok / dur,
            served_rate=self._rate(now),
            mean=mean,
            p10=percentile(lat, 0.10),
            p50=percentile(lat, 0.50),
            p95=percentile(lat, 0.95),
            rel_se=self.rel_se(),
            failing=self.failing(),
            pipe_full=self.max_inflight + 1 >= limit,  # +1: callers may count before or after this reply
            stale=self.stale > STALE_SHARE * self.n,
            spans=max(1, int(dur / usual_span(self.settle or None))),
            fresh_share=self.fresh / self.n if self.n else 0.0,
        )


def usual_span(rtprop: float | None) -> float:
    """An interval's usual length: a limit change needs a few round trips to show."""
    return MIN_INTERVAL_S if rtprop is None else max(MIN_INTERVAL_S, INTERVAL_RTPROPS * rtprop)


def percentile(values: list[float] | None, q: float) -> float | None:
    """Percentile of sorted values, interpolated between ranks.

    Nearest rank would make p10 the minimum and p95 the maximum of a small interval, and the
    windowed minimum of interval minima drifts far below the host's true p10.
    """
    if not values:
        return None
    pos = q * (len(values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def ema(old: float | None, new: float, alpha: float) -> float:
    return new if old is None else alpha * new + (1.0 - alpha) * old


def lower(old: float | None, new: float) -> float:
    return new if old is None or new < old else old


def relative_se(n: int, total: float, squares: float) -> float:
    """Standard error of the mean of n values, relative to the mean, from their sum and sum of
    squares (0 with fewer than 2 values or no positive mean)."""
    if n < 2 or total <= 0:
        return 0.0
    mean = total / n
    var = max(0.0, (squares - n * mean * mean) / (n - 1))
    return math.sqrt(var / n) / mean

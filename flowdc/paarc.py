"""PAARC: per-host adaptive concurrency, as a pure state machine.

One `PaarcController` per host. The scheduler asks it for `limit()` and `hold_until()` before each
dispatch, feeds it one `Sample` per finished request, and calls `tick()` now and then. Nothing here
does I/O or reads a clock: `now` is always passed in, so the simulator in tests/paarc_sim.py can
drive it on virtual time.

The controller works on *intervals* of samples. An interval closes once it spans
max(INTERVAL_RTPROPS x RTprop, MIN_INTERVAL_S) and holds at least MIN_SAMPLES replies; a host whose
latency spreads widely gets longer intervals, until its mean is known to TARGET_REL_SE. From it:
  - RTprop    = minimum of the intervals' p10 TTFB (OK replies) since the last PROBE_RTT: it only
                times intervals and cooldowns;
  - base_lat, base_p50, base_p95 = minima of the intervals' mean, p50 and p95 TTFB, smoothed with
                alpha_ema, same window: the host's unloaded latency and its own spread;
  - rate      = served replies per second (OK and object errors: both took a server slot);
  - estimate  = limit x base_lat / mean (Little's law twice): the requests the host serves in parallel.
The limit sits at mu x ceiling; the ceiling is that estimate, taken where a queue first shows
(STARTUP's end, an up-probe, a cut) and raised by up-probes that find no queue. Only host signals
lower it: 429/503, bursts of timeouts/5xx/resets, and latency that rose with our load (mean against
base_lat, or p50/p95 against base_p50/base_p95 with the mean up too). See docs/paarc.md for the
algorithm in plain words.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any

from flowdc.hostlimit import ClientLoad, FixedLimit, HostCounters, HostLimit
from flowdc.signals import Sample, Signal

# States (exposed in snapshot()["state"]) and the phases of PROBE_BW.
INIT = "INIT"
STARTUP = "STARTUP"
PROBE_BW = "PROBE_BW"
PROBE_RTT = "PROBE_RTT"
BACKOFF = "BACKOFF"
CRUISE = "cruise"
PROBE_UP = "probe_up"
DRAIN = "drain"

# Tuning constants. They are not user options: they set measurement quality, not politeness.
INTERVAL_RTPROPS = 4.0  # a limit change needs a few round trips to show in latency and rate
MIN_INTERVAL_S = 0.1  # floor for very fast hosts, and the interval length before RTprop is known
MIN_SAMPLES = 8  # fewer samples make percentiles too noisy to act on
TARGET_REL_SE = 0.05  # an interval stays open until its mean TTFB is this precise (relative SE)...
STARTUP_REL_SE = 0.1  # ... (a doubling is judged coarser)
PRECISION_WAIT = 8.0  # ... or this many times its usual span has passed: a noisy host still gets judged
CLEAR_Z = 4.0  # ... or its mean is this many standard errors above the unloaded mean: the verdict is in
MIN_LATENCIES = 4  # OK latencies an interval needs before its percentiles are trusted
LAT_BUF_CAP = 128  # latencies kept per interval (systematic subsample): bounds memory per host
STARTUP_GAIN = 2.0  # grow fast while the host shows no queue: 8 -> 1000 in 7 intervals
LATENCY_NOISE_FLOOR_S = 0.005  # under this unloaded mean an asyncio client's own scheduling jitter is as large
#                                as any host queue: for such hosts (loopback, LAN) rate decides, not latency
STARTUP_RATE_GAIN = 1.3  # a doubling that raised the served rate this much was worth its latency
PROBE_RATE_GAIN = 1.1  # likewise for an up-probe (1.25x the load, so at most 1.25x the rate)
PROBE_GAIN = 1.25  # an up-probe offers 25% more than the ceiling (at least one more request)
PROBE_EVERY = 8  # cruise intervals between up-probes: probing costs a little queueing each time
STARTUP_CONFIRM = 2  # cruise intervals before the first probe after STARTUP
PROBE_RTT_GAIN = 0.5  # PROBE_RTT halves the load so any standing queue drains
QUEUE_TOL = 0.1  # mean latency this far above base_lat means our own requests are queueing
SEVERE = 1.2  # inflation this far past theta_50/theta_95 acts at once; milder must repeat
QUEUE_TOL_SE = 4.0  # ... or this many standard errors of the difference (this interval's and the baseline's)
CUT_EFFECT = 0.05  # after a latency cut, mean latency must fall this much, or the slowness isn't ours
STALE_SHARE = 0.1  # a drain lasts while more of an interval's replies than this were sent before the cut
JUMP = 1.3  # a raise by more than this (a probe is 1.25x) leaves the next interval's queue half grown
KNEE_MARGIN = 0.98  # the interval that finds a queue ends before the queue is full grown: its mean
#                    latency reads a little low, and the estimate 1-2% high
COOLDOWN_RTPROPS = 5.0  # after a cut, wait this many round trips for in-flight replies to drain
UNKNOWN_RTPROP_S = 0.2  # stands in for RTprop before the first interval has measured it
FAIL_FRACTION = 0.2  # share of an interval's samples that are timeouts/5xx/resets to mean "host failing"
FAIL_MIN = 3  # ... and at least this many, so one slow object never counts as overload
PACE_MARGIN = 0.9  # a rate-limited host is paced this far under the rate it accepted
PACE_CUT = 0.5  # without a measured rate (refusals within a burst), halve: few steps, each a hold
PACE_FLOOR = 0.5  # never pace under this share of the best rate the host accepted: refusals that
#                   do not depend on our rate would otherwise ratchet the pace down to nothing
PACE_GAIN = 1.03  # paced hosts are offered this much more per quiet interval...
PACE_SEEK_GAIN = 1.06  # ... or this much while no refusal has yet shown the rate the host accepts
PACE_STEP_S = 0.1  # ... and at least this often while quiet, whatever the intervals do
PACE_CAP_MARGIN = 0.95  # ... but not past this share of the rate that drew 429s (the ceiling; it creeps)
CREEP_QUIET_S = 2.0  # a paced host quiet this long at its ceiling lets the ceiling creep up...
CREEP_QUIET_REPLIES = 50  # ... and this many replies long (a 2/s host would be refused every few s)
CREEP_STEP = 1.002  # ... by this much per pace step (2%/s) at first...
CREEP_GIVEBACK = 1.02  # ... and each refusal takes 2% back...
CREEP_MIN = 0.85  # ... down to this share of the measured rate (a burst in the meter reads high)
CREEP_MAX_DOUBLINGS = 3  # the creep doubles its speed per quiet CREEP_QUIET_S, up to 16%/s
METER_MIN_S = 0.5  # an accepted rate needs this much unheld time behind it (a refilled burst fades)
METER_SPAN_S = 1.0  # the accepted-rate meter forgets older replies past this span
PUSHBACK_MIN_REPLIES = 20  # a share over fewer replies is noise (the first refusal from a host still counts)
PUSHBACK_SHARE = 0.15  # 429/503s must be this share of recent replies to teach a cap or a pace:
#                        a host we overrun refuses much of the excess, while per-URL refusals
#                        stay a small share whatever the load, and must not ratchet anything down
PUSHBACK_STREAK = 4  # before PUSHBACK_MIN_REPLIES, this many refusals in a row count (per-URL ones, 1 in 12:
#                     once in 1,700)
STALL_LATENCIES = 10.0  # unanswered this many p95 latencies, a request no longer takes a slot...
STALL_MIN_S = 1.0  # ... and never sooner than this
SHARE_MEMORY = 40  # replies the refused share is averaged over: a storm of fast 429s shows within ~10
SHARE_Z = 1.64  # ... as a one-sided 95% lower bound, so chance runs of per-URL refusals do not count
RATE_EVIDENCE = 0.8  # refused under this share of a load lately served: the host limits by rate
RECALL_SLACK = 1.25  # refused again within this factor of what a forgotten lesson said: the limit stands
MEMORY_MAX_PERIODS = 8  # a lesson confirmed again and again is kept up to this many probe_rtt_periods
_HOST_FAILURES = frozenset((Signal.TIMEOUT, Signal.SERVER_ERROR, Signal.CONN_ERROR))
_SERVED = frozenset((Signal.OK, Signal.OBJECT_ERROR))


@dataclass(frozen=True, slots=True)
class PaarcParams:
    """The user-facing knobs, with the seed's names and README defaults."""

    C_init: int = 8
    C_min: int = 2
    C_max: int = 2000
    mu: float = 1.0
    beta: float = 0.7
    theta_50: float = 1.5
    theta_95: float = 2.0
    probe_rtt_period: float = 30.0
    alpha_ema: float = 0.3

    def __post_init__(self) -> None:
        # The one place these rules live: config.py reports them as user errors.
        if not 1 <= self.C_min <= self.C_init <= self.C_max:
            raise ValueError(f"need 1 <= C_min <= C_init <= C_max, got {self.C_min}, {self.C_init}, {self.C_max}")
        if not 0 < self.mu <= 1:
            raise ValueError(f"mu must be in (0, 1], got {self.mu}")
        if not 0 < self.beta < 1:
            raise ValueError(f"beta must be in (0, 1), got {self.beta}")
        if self.theta_50 <= 1 or self.theta_95 <= 1:
            raise ValueError("theta_50 and theta_95 must be > 1 (they multiply unloaded latencies)")
        if self.probe_rtt_period <= 0:
            raise ValueError("probe_rtt_period must be > 0")
        if not 0 < self.alpha_ema <= 1:
            raise ValueError(f"alpha_ema must be in (0, 1], got {self.alpha_ema}")

    @classmethod
    def from_options(cls, opts: object) -> PaarcParams:
        """Copy the knobs from any object with the same attribute names (e.g. config.PaarcOptions)."""
        return _interned(*(getattr(opts, name) for name in _PARAM_NAMES))


_PARAM_NAMES = tuple(f.name for f in fields(PaarcParams))


@lru_cache(maxsize=64)
def _interned(*values: Any) -> PaarcParams:
    # Every host of a run shares one params object instead of carrying its own copy.
    return PaarcParams(*values)


@dataclass(slots=True)
class _Summary:
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


class _Window:
    """Running counts for the current interval, plus a bounded subsample of OK latencies.

    Replies that arrive in the interval's first RTprop were mostly sent under the previous limit,
    so they count for goodput and failures but not for rate or latency ("settling").
    """

    __slots__ = ("fails", "first", "lat", "max_inflight", "n", "ok", "seen", "served", "settle", "stale",
                 "start", "stride", "ttfb_sq", "ttfb_sum")

    def __init__(self, now: float) -> None:
        self.reset(now, None)

    def reset(self, now: float, rtprop: float | None) -> None:
        self.start = now
        self.settle = rtprop or 0.0  # the same float object as the controller's RTprop: no new allocation
        self.n = self.ok = self.served = self.fails = self.max_inflight = self.seen = self.stale = 0
        self.ttfb_sum = self.ttfb_sq = 0.0
        self.first = 0.0  # arrival of the first settled reply: the rate is measured from there
        self.stride = 1
        self.lat: array[float] | None = None  # allocated on first use: idle hosts stay tiny

    def add(self, now: float, s: Sample, timed: bool = True) -> None:
        if self.n == 0 and s.ttfb is not None and now - s.ttfb > self.start:
            # The host sat idle before this request was sent: start the interval at the send, so
            # an idle gap does not dilute the rate.
            self.start = now - s.ttfb
        self.n += 1
        if s.inflight > self.max_inflight:
            self.max_inflight = s.inflight
        if s.signal in _HOST_FAILURES:
            self.fails += 1
        if s.signal is Signal.OK:
            self.ok += 1
        if now < self.start + self.settle or s.ttfb is None or s.signal not in _SERVED:
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
        span = _span(rtprop)
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

    def rel_se(self) -> float:
        """Standard error of the mean TTFB, relative to the mean (0 with fewer than 2 latencies)."""
        n = self.seen
        if n < 2 or self.ttfb_sum <= 0:
            return 0.0
        mean = self.ttfb_sum / n
        var = max(0.0, (self.ttfb_sq - n * mean * mean) / (n - 1))
        return math.sqrt(var / n) / mean

    def _rate(self, now: float) -> float:
        """Replies per second between the first settled reply and now.

        Counting from the first reply, not from a clock edge, keeps the rate honest when replies
        come in waves (synchronised servers): n replies span n - 1 gaps.
        """
        if self.served < 2 or now <= self.first:
            return 0.0
        return (self.served - 1) / (now - self.first)

    def summarize(self, now: float, limit: int) -> _Summary:
        dur = max(now - self.start, 1e-9)
        mean = self.ttfb_sum / self.seen if self.seen else None
        lat = sorted(self.lat) if self.lat is not None and len(self.lat) >= MIN_LATENCIES else None
        return _Summary(
            ok_rate=self.ok / dur,
            served_rate=self._rate(now),
            mean=mean,
            p10=_pct(lat, 0.10),
            p50=_pct(lat, 0.50),
            p95=_pct(lat, 0.95),
            rel_se=self.rel_se(),
            failing=self.fails >= FAIL_MIN and self.fails >= FAIL_FRACTION * self.n,
            pipe_full=self.max_inflight + 1 >= limit,  # +1: callers may count before or after this reply
            stale=self.stale > STALE_SHARE * self.n,
            spans=max(1, int(dur / _span(self.settle or None))),
        )


def _span(rtprop: float | None) -> float:
    """An interval's usual length: a limit change needs a few round trips to show."""
    return MIN_INTERVAL_S if rtprop is None else max(MIN_INTERVAL_S, INTERVAL_RTPROPS * rtprop)


def _pct(values: list[float] | None, q: float) -> float | None:
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


class _Pushback:
    """What a host's 429/503s taught us, kept for probe_rtt_period: the in-flight level that drew
    them (probes stay below it: each overshoot costs a Retry-After hold), and, for a host that
    limits by rate rather than by parallel requests, a send pace. Only hosts that pushed back
    carry one, so the common controller stays small."""

    __slots__ = ("acted_at", "best_rate", "cap", "creep", "floor", "grown_at", "meter_ok", "meter_start", "ok_level",
                 "pace", "rate_cap", "recalled", "refused_at", "replies", "seeking", "served_since", "share", "streak",
                 "until")

    def __init__(self) -> None:
        self.cap = 0  # in-flight count at the 429 (that request included)
        self.recalled = False  # the cap was found again where it was: the rest of that burst adds nothing
        self.until = 0.0
        self.pace = 0.0  # requests per second; 0 = not paced
        self.rate_cap = 0.0  # accepted rate when the pace last drew a 429
        self.creep = 1.0  # how far quiet time has raised the pace's ceiling above rate_cap
        self.refused_at = -math.inf  # the latest 429/503, counted or not
        self.meter_start = 0.0
        self.meter_ok = 0
        self.replies = 0  # replies with headers since the record was made
        self.share = 0.0  # refused share of the last ~SHARE_MEMORY replies (moving average)
        self.streak = 0  # refusals since the last reply that was not one
        self.served_since = 0  # replies since the last refusal
        self.ok_level = 0  # most requests in flight when an OK came back: a load the host takes
        self.acted_at = -1.0  # when a cap or pace was last set: older requests' replies are stale
        self.best_rate = 0.0  # highest accepted rate measured: the pace's floor is a share of it
        self.floor = 0.0  # the pace's floor when it was last set
        self.grown_at = 0.0  # when the pace last grew (or was judged)
        self.seeking = False  # paced, the rate unknown: a refusal at our pace says it is too fast

    def reply(self, refused: bool, retried: bool = False) -> None:
        self.replies += 1
        self.share += (float(refused) - self.share) / SHARE_MEMORY
        # A refused retry neither makes nor breaks a streak: retries wait out the hold together and
        # go first after it, and a URL that failed may well fail again.
        if not (refused and retried):
            self.streak = self.streak + 1 if refused else 0
        self.served_since = 0 if refused else self.served_since + 1

    def refused(self, now: float, retried: bool = False) -> None:
        self.reply(refused=True, retried=retried)
        self.refused_at = now
        if self.rate_cap > 0 and self.creep > CREEP_MIN:
            # Crept past the rate, or the rate was measured high (a refilled burst counts in it):
            # give a little back, and start the next climb slowly. Never under the pace's floor:
            # a rate measured while we barely sent can be far under what the host serves.
            self.creep = max(CREEP_MIN, self.creep / CREEP_GIVEBACK)
            self.pace = min(self.pace, max(self.ceiling(), self.floor))

    def ceiling(self) -> float:
        """The most the pace may grow to: a share of the measured rate, crept up while quiet."""
        return PACE_CAP_MARGIN * self.rate_cap * self.creep

    def refused_share_low(self) -> float:
        """A one-sided 95% lower bound of the recent refused share (normal approximation)."""
        p, n = self.share, min(self.replies, SHARE_MEMORY)
        return p - SHARE_Z * math.sqrt(p * (1.0 - p) / n)

    def accepted_rate(self, now: float) -> float | None:
        age = now - self.meter_start
        if age < METER_MIN_S or self.meter_ok < MIN_LATENCIES:
            return None
        rate = self.meter_ok / age
        self.best_rate = max(self.best_rate, rate)
        return rate

    def recent_rate(self, now: float) -> float | None:
        """OK replies per second since the meter started, however short the span: right after a
        hold a refilled burst inflates it, so it is an upper bound of the accepted rate."""
        if self.meter_ok < MIN_LATENCIES:
            return None
        return self.meter_ok / max(now - self.meter_start, MIN_INTERVAL_S)

    def count_ok(self, now: float) -> None:
        self.meter_ok += 1
        age = now - self.meter_start
        # Halve the counts: a rolling window without keeping timestamps. (Not while they are few:
        # a host that allows 2/s would never hold enough replies to give a rate.)
        if age > METER_SPAN_S and self.meter_ok >= 2 * MIN_LATENCIES:
            self.meter_ok //= 2
            self.meter_start = now - age / 2

    def pause_meter(self, until: float) -> None:
        """The host is held: time on hold says nothing about the rate it accepts."""
        self.meter_start = max(self.meter_start, until)
        self.meter_ok = 0

    def restart_meter(self, at: float) -> None:
        self.meter_start = at
        self.meter_ok = 0


class PaarcController:
    """Adaptive per-host concurrency limit; satisfies flowdc.hostlimit.HostLimit."""

    __slots__ = (
        "_hold",
        "_limit",
        "base_lat",
        "base_lat_se",
        "base_load",
        "base_p50",
        "base_p95",
        "born",
        "ceiling",
        "client",
        "cooldown_until",
        "counters",
        "cut_at",
        "cut_mean",
        "goodput",
        "intervals",
        "last_inflight",
        "last_ok_inflight",
        "last_ok_ttfb",
        "lowered_at",
        "mean_ema",
        "mean_ema_var",
        "memory_s",
        "now",
        "p",
        "p50_ema",
        "p95_ema",
        "phase",
        "pooled",
        "probe_countdown",
        "push",
        "raised_by",
        "refused_before",
        "rtprop",
        "rtprop_since",
        "served_before",
        "stale_cap",
        "state",
        "strike",
        "win",
    )

    def __init__(self, params: PaarcParams | None = None, now: float = 0.0, client: ClientLoad | None = None) -> None:
        self.p = params or _interned(*(f.default for f in fields(PaarcParams)))
        self.client = client  # the downloader's own load: no growth while it is the bottleneck
        self.counters = HostCounters()
        self.born = now
        self.state = INIT
        self.phase = CRUISE
        self._limit = self.p.C_init
        self.ceiling: float = self.p.C_init  # an int until first changed: shares the cached small int
        self._hold = 0.0
        self.cooldown_until = 0.0
        self.cut_at = 0.0
        self.lowered_at = 0.0  # when the limit last went down: replies to older requests are stale
        self.raised_by = 1.0  # the factor of the last change of the limit if it rose, else 1
        self.cut_mean: float | None = None  # mean latency when latency last made us cut
        self.rtprop: float | None = None
        self.rtprop_since = now
        self.base_lat: float | None = None
        self.base_lat_se = 0.0  # relative standard error of base_lat when it was measured
        self.base_load = 0  # the lightest limit an interval of the baseline window ran at (0: none yet)
        self.base_p50: float | None = None
        self.base_p95: float | None = None
        self.mean_ema: float | None = None
        self.mean_ema_var = 0.0  # its relative variance: intervals' noise, smoothed like the mean
        self.p50_ema: float | None = None
        self.p95_ema: float | None = None
        self.goodput = 0.0
        self.last_inflight = 0
        self.last_ok_ttfb: float | None = None  # stands in for the percentiles until an interval closes
        self.last_ok_inflight = 0  # requests in flight at the latest OK: a load the host just took
        self.pooled = False  # a reply came on a pooled connection
        self.intervals = 0
        self.probe_countdown = PROBE_EVERY
        self.strike = False  # the last judged cruise interval showed marginal congestion
        self.win = _Window(now)
        self.now = now
        self.push: _Pushback | None = None
        self.refused_before = False
        self.served_before = 0.0  # served rate of the interval before the last raise
        self.memory_s = self.p.probe_rtt_period  # how long the next pushback lesson is kept
        self.stale_cap = 0  # the cap of a lesson that expired (0: none)

    # -- the HostLimit protocol -----------------------------------------------------------------
    def limit(self) -> int:
        return self._limit

    def hold_until(self) -> float:
        return self._hold

    def min_gap(self) -> float:
        """Seconds between two sends to this host (0: no pacing)."""
        return 1.0 / self.push.pace if self.push is not None and self.push.pace > 0 else 0.0

    def stall_after(self) -> float:
        """A request unanswered for many times the host's usual latency is stuck on its object (a
        stalled body, a slow backend for that URL): it waits for its timeout without a slot, so a
        few stuck URLs cannot block a host that answers everything else in milliseconds."""
        typical = self.p95_ema or self.base_lat or self.rtprop or self.last_ok_ttfb
        return math.inf if typical is None else max(STALL_MIN_S, STALL_LATENCIES * typical)

    def on_sample(self, now: float, sample: Sample) -> None:
        self.now = now
        self.counters.count(sample.signal)
        self.last_inflight = sample.inflight
        if sample.signal is Signal.OVERLOAD:
            sent = None if sample.ttfb is None else now - sample.ttfb
            if self._refusal_is_about_host(sent, sample.retried):
                known = self._remember_pushback(now, sent, sample.inflight)  # reads the rate before the hold
                self._hold_for(now, sample.retry_after)
                self._overload(now, sent, sample.retry_after, known)
            # else: a stray refusal while the host accepts nearly everything else is about that
            # URL; the caller retries that URL after its Retry-After, the host goes on.
            return
        self._hold_for(now, sample.retry_after)
        # A reply on a connection opened for it took a connect (and TLS handshake) longer: once the
        # host has answered on a pooled connection, only those time it. (A host that closes every
        # connection never does, and is timed with its connects.)
        if not sample.fresh:
            self.pooled = True
        timed = not (sample.fresh and self.pooled)
        if sample.signal is Signal.OK and sample.ttfb is not None and timed:
            self.last_ok_ttfb = sample.ttfb
        if sample.signal is Signal.OK:
            self.last_ok_inflight = sample.inflight
        if self.push is not None and sample.ttfb is not None:
            self.push.reply(refused=False)
            if sample.signal is Signal.OK:
                self.push.ok_level = max(self.push.ok_level, sample.inflight)
                if now >= self._hold:
                    self.push.count_ok(now)
        if self.state == BACKOFF:
            self.tick(now)
        else:
            if sample.ttfb is not None and now - sample.ttfb < self.lowered_at:
                self.win.stale += 1
            self.win.add(now, sample, timed)
            if self._interval_due(now):
                self._close_interval(now)

    def tick(self, now: float) -> None:
        self.now = now
        if self.state == BACKOFF:
            if now >= self.cooldown_until:
                self._enter_cruise(now)
            return
        if self._interval_due(now):
            self._close_interval(now)
        elif self.push is not None and now - self.push.grown_at >= PACE_STEP_S:
            # A slow pace yields few replies, so intervals close rarely: the pace grows on the
            # clock too, or one low estimate would stick.
            self._adjust_pace(now)

    def _interval_due(self, now: float) -> bool:
        # STARTUP doubles the load: the queue a doubling makes shows through more noise, and waiting
        # for a precise mean would slow the ramp of a host with a wide spread to a crawl. A drain
        # interval is not judged: no shortcut, so it lasts long enough for the queue it holds to go.
        if self.state == STARTUP:
            return self.win.due(now, self.rtprop, self.base_lat, STARTUP_REL_SE)
        drain = self.state == PROBE_BW and self.phase == DRAIN
        return self.win.due(now, self.rtprop, None if drain else self.base_lat)

    def snapshot(self) -> dict[str, float | int | str | None]:
        return {
            "state": self.state,
            "phase": self.phase if self.state == PROBE_BW else None,
            "limit": self._limit,
            "ceiling": round(self.ceiling, 2),
            "inflight": self.last_inflight,
            "rtprop_ms": _ms(self.rtprop),
            "base_lat_ms": _ms(self.base_lat),
            "p50_ms": _ms(self.p50_ema),
            "p95_ms": _ms(self.p95_ema),
            "goodput": round(self.goodput, 3),
            "hold_until": self._hold,
            "intervals": self.intervals,
            "pace_per_s": round(self.push.pace, 2) if self.push is not None and self.push.pace else None,
            "cap_seen": self.push.cap if self._cap_remembered() else None,
            **self.counters.as_dict(),
        }

    # -- overload ---------------------------------------------------------------------------------
    def _hold_for(self, now: float, retry_after: float | None) -> None:
        if retry_after is None:
            return
        # The host named a time: no new requests to it before then, whatever the state.
        self._hold = max(self._hold, now + retry_after)
        if self.push is not None:
            self.push.pause_meter(self._hold)

    def _refusal_is_about_host(self, sent: float | None, retried: bool = False) -> bool:
        """Count a 429/503 and tell whether it speaks for the host: the first one from a host we
        know nothing about always does (be polite first); later ones do once they are a real share
        of the recent replies, or a run of fresh ones before a share can be told. A host we overrun
        refuses much of the excess; a handful of URLs refused while everything else is served is
        about those URLs, not about our load."""
        push = self.push
        if push is None:
            self.push = _Pushback()
            self.push.best_rate = self.goodput  # a record made afresh keeps the pace's floor
            self.push.ok_level = self.last_ok_inflight  # so a refusal under it next says "by rate"
            self.push.refused(self.now, retried)
            # Only a host's very first refusal counts unseen: once its record has expired, a
            # refusal at whatever load we happen to run must show a share like any other.
            first, self.refused_before = not self.refused_before, True
            return first
        push.refused(self.now, retried)
        if self.state == BACKOFF and self._before_cut(sent):
            return True  # the rest of the burst that made us back off: it lowers the remembered cap
        if push.seeking and sent is not None and sent >= push.acted_at:
            # A host that limits by rate, paced while its rate is still unknown, refused a request
            # sent at our pace: the pace is too fast (once a rate is known, the share rule judges).
            return True
        fresh = sent is None or sent >= push.acted_at
        if push.replies < PUSHBACK_MIN_REPLIES and push.streak >= PUSHBACK_STREAK and fresh:
            # Too few replies for a share, but refused again and again with nothing served between,
            # as a host does that still limits us right after its first hold (a dozen fast 429s).
            return True
        # Per-URL refusals that come back on every retry keep a steady share whatever our load,
        # and a share over a few dozen replies wanders: only a share clearly above the bar counts.
        return push.replies >= PUSHBACK_MIN_REPLIES and push.refused_share_low() >= PUSHBACK_SHARE

    def _remember_pushback(self, now: float, sent: float | None, inflight: int) -> float | None:
        """Learn from a 429/503 what a cut alone would forget.

        A reply to a request sent before our last cut is part of the same burst and teaches nothing
        new. A fresh one well under a load the host lately served means fewer parallel requests
        did not help: the host limits by rate, so pace the sends.

        Returns the limit a probe past a forgotten cap should fall back to when it found that cap
        where it was (None otherwise): the host is known to serve just under it.
        """
        push = self.push
        assert push is not None  # _refusal_is_about_host made it
        remembered = now < push.until and push.cap > 0
        if self.state == BACKOFF and self._before_cut(sent):
            if remembered and push.cap > self.p.C_min and not push.recalled:
                push.cap -= 1  # one more of the same burst refused: the host took one fewer
                self._set_limit(self._limit)  # and stay under it from now on
            return None
        if sent is not None and sent < push.acted_at:
            return None  # sent before the last cap or pace took effect: it cannot judge them
        # Refused well under a load the host has lately served, or with no fewer requests left to
        # try: its limit is on requests per second, not on requests at once. ("Well" under: a host
        # counts a request until its reply is fully out, so a hard cap may refuse one or two under
        # the level we last saw served.)
        paced = push.pace > 0  # a paced host's record outlives the memory: the pace is its lesson
        under_served = inflight < RATE_EVIDENCE * push.ok_level or self._limit <= self.p.C_min
        by_rate = (remembered or paced) and under_served
        accepted = push.accepted_rate(now) if by_rate else None
        found_again: int | None = None  # a forgotten cap, found where it was
        if not remembered:
            prior_cap = push.cap or self.stale_cap
            self.memory_s = self._memory_after_reprobe(prior_cap, push, inflight, accepted)
            if self.memory_s > self.p.probe_rtt_period and not by_rate:
                # The probe may be a few past the cap by the time the refusals' share counted:
                # keep the earlier finding, or the limit would not be pinned under it.
                found_again = min(prior_cap, inflight)
        if remembered:
            push.cap = min(push.cap, inflight)
        else:
            push.cap = inflight if found_again is None else found_again
        push.recalled = found_again is not None
        push.until = now + self.memory_s
        if by_rate:
            lifetime = self.counters.ok / max(now - self.born, METER_MIN_S * 2)
            if accepted is not None:
                push.rate_cap, push.creep = accepted, 1.0
                new_pace = PACE_MARGIN * accepted
            else:
                # Cut from what the host just took, not from what the limit would allow: a fast
                # 429 makes the latter huge, and each halving from there costs a Retry-After.
                recent = push.recent_rate(now)
                if recent is None:
                    recent = self._send_rate(ttfb_hint=self.last_ok_ttfb or (None if sent is None else now - sent))
                upper = min(push.pace or math.inf, recent)
                new_pace = PACE_CUT * upper
                # Between what the host refused and what it has delivered, the geometric middle:
                # a slow host (10/s) is found in two or three holds, not a halving per hold.
                delivered = max(push.best_rate, lifetime)
                if 0 < delivered < new_pace:
                    new_pace = min(new_pace, math.sqrt(upper * delivered))
            # Refusals that do not depend on our rate must not ratchet the pace down: never under
            # a share of the best rate the host delivered, or of its average since first seen.
            push.floor = PACE_FLOOR * max(push.best_rate, lifetime)
            new_pace = max(new_pace, push.floor)
            # A first pace, set without a measured rate, is a guess: one refusal at it may cut
            # it again. After that, only a clear share of refusals does.
            push.seeking = push.pace <= 0 and accepted is None
            push.pace = new_pace if push.pace <= 0 else min(push.pace, new_pace)
        push.acted_at = now
        push.restart_meter(max(now, self._hold))
        return None if found_again is None else float(found_again - 1)

    def _memory_after_reprobe(self, prior_cap: int, push: _Pushback, inflight: int, accepted: float | None) -> float:
        """How long to keep a lesson learned afresh. Probing past a forgotten limit costs a hold and
        a few refusals each time: a host that refuses again where it did before keeps its limit,
        so the lesson is kept twice as long; one that took clearly more is re-probed on schedule."""
        same_cap = prior_cap > 0 and inflight <= RECALL_SLACK * prior_cap
        same_rate = accepted is None or push.rate_cap <= 0 or accepted <= RECALL_SLACK * push.rate_cap
        if same_cap and same_rate:
            return min(2.0 * self.memory_s, MEMORY_MAX_PERIODS * self.p.probe_rtt_period)
        return self.p.probe_rtt_period

    def _before_cut(self, sent: float | None) -> bool:
        """Sent under the limit the last cut replaced (a send in the very instant of the cut too:
        its slot was freed by an earlier reply of that instant)."""
        return sent is None or sent <= self.cut_at + 1e-9

    def _cap_remembered(self) -> bool:
        return self.push is not None and self.now < self.push.until and self.push.cap > 1

    def _send_rate(self, ttfb_hint: float | None = None) -> float:
        """Requests per second the concurrency limit allows at the unloaded latency."""
        latency = self.base_lat or self.rtprop or ttfb_hint or UNKNOWN_RTPROP_S
        return self._limit / latency

    def _adjust_pace(self, now: float) -> None:
        """A quiet interval, or a quiet PACE_STEP_S: offer a paced host a little more, up to the rate
        it accepted; once the memory has expired and the pace no longer binds, drop the record."""
        push = self.push
        if push is None:
            return
        push.grown_at = now
        if push.pace > 0 and now >= self._hold:
            ceiling = float("inf")
            if push.rate_cap > 0:
                # A measured rate is never forgotten, only crept past: re-probing it at the
                # expiry would cost a hold and a burst of 429s each time.
                ceiling = push.ceiling()
                quiet = now - push.refused_at
                if push.pace >= ceiling and quiet >= CREEP_QUIET_S and push.served_since >= CREEP_QUIET_REPLIES:
                    # Quiet at the ceiling: the meter that set it reads a little low (holds,
                    # timer slack), or the host now allows more. Creep up, faster the longer the
                    # host stays quiet (doubling every CREEP_QUIET_S), until it refuses again.
                    doublings = min(int(quiet / CREEP_QUIET_S) - 1, CREEP_MAX_DOUBLINGS)
                    step = min(CREEP_STEP ** (2**doublings), PACE_GAIN)
                    push.creep *= step
                    ceiling *= step
            gain = PACE_GAIN if push.rate_cap > 0 else PACE_SEEK_GAIN
            push.pace = min(push.pace * gain, max(push.pace, ceiling))  # the ceiling stops growth
            if now >= push.until and push.pace > 1.5 * self._send_rate():
                push.pace = 0.0
        if push.pace <= 0 and now >= push.until:
            self.stale_cap = push.cap or self.stale_cap  # a record a stray refusal made has none
            self.push = None

    def _overload(self, now: float, sent: float | None, retry_after: float | None,
                  known: float | None = None) -> None:
        """429/503 or a failing interval: cut once per burst, then let the replies on the way arrive.

        During the cooldown only a reply to a request sent *after* the cut is news (the cut was not
        deep enough); the rest of the burst was sent before it and must not cut again.
        """
        if self.state == BACKOFF:
            self.cooldown_until = max(self.cooldown_until, now + (retry_after or 0.0))
            if self._before_cut(sent):
                return
        if known is not None:
            # A probe found a known cap where it was: back to just under it, not a blind cut.
            self.ceiling = max(self.p.C_min, min(self.ceiling, known))
        else:
            # Floor: a cut must lower even a small limit (round(3 x 0.7) would not).
            self.ceiling = max(self.p.C_min, math.floor(self.p.beta * min(self.ceiling, self._limit)))
        self._set_limit(self.ceiling)
        rtt = self.rtprop if self.rtprop is not None else UNKNOWN_RTPROP_S
        self.cut_at = now
        self.cooldown_until = max(self.cooldown_until, now + max(COOLDOWN_RTPROPS * rtt, retry_after or 0.0))
        self.state = BACKOFF

    # -- one interval -----------------------------------------------------------------------------
    def _close_interval(self, now: float) -> None:
        s = self.win.summarize(now, self._limit)
        self.intervals += 1
        self.goodput = s.ok_rate
        if s.failing:
            self.win.reset(now, self.rtprop)
            self._overload(now, None, None)
            return
        self._measure(s)
        if self.push is not None:
            self.push.best_rate = max(self.push.best_rate, s.ok_rate)  # the pace's floor follows it
        self._adjust_pace(now)
        self.win.reset(now, self.rtprop)
        if self.state == INIT:
            self._step_init(s)
        elif self.state == STARTUP:
            self._step_startup(s)
        elif self.state == PROBE_RTT:
            self._end_probe_rtt(s, now)
        elif self.phase == PROBE_UP:
            self._step_probe_up(s)
        else:
            self._step_cruise(s, now)
        self.served_before = s.served_rate  # what the next raise, if any, has to beat

    def _measure(self, s: _Summary) -> None:
        """Smooth the interval's latencies with alpha_ema, and update the minima.

        The unloaded baselines are minima of the smoothed series: the minimum of raw intervals
        (a few dozen replies each) sits far under the host's true values once its latency spreads,
        and every test and estimate measured against it would then ratchet the limit down.
        RTprop stays the raw minimum of p10: it only times intervals and cooldowns.
        The minima's window restarts at each PROBE_RTT (every probe_rtt_period), which resets them.
        """
        if s.p10 is not None and (self.rtprop is None or s.p10 <= self.rtprop):
            self.rtprop = s.p10
        a = self.p.alpha_ema
        if s.mean is not None:
            var = s.rel_se * s.rel_se
            first = self.mean_ema is None
            self.mean_ema = _ema(self.mean_ema, s.mean, a)
            self.mean_ema_var = var if first else a * a * var + (1 - a) ** 2 * self.mean_ema_var
            if self.base_lat is None or self.mean_ema < self.base_lat:
                self.base_lat, self.base_lat_se = self.mean_ema, math.sqrt(self.mean_ema_var)
            self.base_load = min(self.base_load or self._limit, self._limit)
        if s.p50 is not None and s.p95 is not None:
            self.p50_ema = _ema(self.p50_ema, s.p50, a)
            self.p95_ema = _ema(self.p95_ema, s.p95, a)
            self.base_p50 = _lower(self.base_p50, self.p50_ema)
            self.base_p95 = _lower(self.base_p95, self.p95_ema)

    def _inflated(self, s: _Summary, factor: float = 1.0) -> bool:
        """The seed's test, against the host's own spread: the host is full when p50 or p95 TTFB
        rise well above their unloaded values. (Against RTprop, as the seed had it, a host whose
        p95 is naturally twice its p10, as with any cache that misses, would read as always full.)"""
        if self.base_p50 is None or self.base_p95 is None or s.p50 is None or s.p95 is None:
            return False
        if not (s.p50 > factor * self.p.theta_50 * self.base_p50 or s.p95 > factor * self.p.theta_95 * self.base_p95):
            return False
        # A queue delays every reply, so the mean rises with the percentiles; a percentile that
        # rose alone is a chance clutch of slow objects in a host with a long tail.
        return self._mean_rose(s, QUEUE_TOL_SE)

    def _queued(self, s: _Summary) -> bool:
        """Milder: mean latency above the unloaded mean means our extra requests only wait."""
        return self._mean_rose(s, QUEUE_TOL_SE, QUEUE_TOL)

    def _mean_rose(self, s: _Summary, z: float, floor: float = 0.0) -> bool:
        """Mean TTFB above the unloaded mean by z standard errors of the difference (and by floor)."""
        if s.mean is None or self.base_lat is None:
            return False
        noise = math.sqrt(s.rel_se * s.rel_se + self.base_lat_se * self.base_lat_se)
        return s.mean > (1 + max(floor, z * noise)) * self.base_lat

    def _congested(self, s: _Summary) -> bool:
        """Any sign of a queue: used right after we raised the load on purpose."""
        return self._inflated(s) or self._queued(s)

    def _congested_in_cruise(self, s: _Summary) -> bool:
        """At a steady limit, one marginal interval is more often noise than a queue (a small
        interval's p50 wanders by several percent): act at once only on severe inflation, and on
        marginal signs only when two intervals running agree."""
        if self._inflated(s, SEVERE):
            self.strike = False
            return True
        if not self._congested(s):
            self.strike = False
            return False
        if self.strike:
            self.strike = False
            return True
        self.strike = True
        return False

    def _estimate(self, s: _Summary) -> float | None:
        """Requests the host serves in parallel, by Little's law twice: in flight = rate x mean
        latency, and in service = rate x unloaded mean latency (base_lat).

        With the pipe full, requests in flight are the limit, known exactly, so the estimate is
        limit x base_lat / mean: a ratio of two means over hundreds of replies. A rate counted over
        one short interval wanders by several percent (more on a host whose latency spreads). The
        unloaded mean, not RTprop: a low percentile would put the estimate under the knee by the
        host's own spread (p10/mean), which for a host with a long tail is half its capacity or less.

        After a jump in the limit (STARTUP's doubling, the return from PROBE_RTT) the queue is far
        from grown by the interval's end, its mean reads low, and the ratio reads high (1076 for a
        capacity of 1000): then the rate, if lower, is the better guess.
        """
        if self.base_lat is None:
            return None
        by_rate = s.served_rate * self.base_lat if s.served_rate > 0 else None
        if s.mean is None or not s.pipe_full:
            return by_rate
        by_latency = KNEE_MARGIN * self._limit * self.base_lat / s.mean
        jumped = self.raised_by > JUMP
        return by_latency if by_rate is None or not jumped else min(by_latency, by_rate)

    def _cut_to_estimate(self, s: _Summary) -> None:
        """Latency says we're past the knee: jump to the capacity estimate, not a blind cut.

        If the estimate is not below the current limit (the unloaded latency was itself measured
        under a queue, e.g. C_init above capacity), fall back to a multiplicative cut.
        """
        est = self._estimate(s)
        if est is None or est >= self._limit:
            est = self._limit * self.p.beta
        self.ceiling = max(float(self.p.C_min), est)
        self._set_limit(self.p.mu * self.ceiling)
        self.cut_mean = s.mean

    def _not_our_queue(self, s: _Summary) -> bool:
        """Still slow after our cut had time to drain: the host itself got slower, not queued by us."""
        return self.cut_mean is not None and s.mean is not None and s.mean >= (1 - CUT_EFFECT) * self.cut_mean

    def _rebaseline(self, s: _Summary, now: float) -> None:
        """Take this interval's latencies as the new unloaded ones (what PROBE_RTT does on a timer).

        The smoothed series restart here too: their history would pull the next minima back toward
        the latencies this replaces (a host that got slower kept a baseline ~7% under its new mean)."""
        if s.p10 is not None:
            self.rtprop = s.p10
        if s.mean is not None:
            self.base_lat = self.mean_ema = s.mean
            self.base_lat_se, self.mean_ema_var, self.base_load = s.rel_se, s.rel_se * s.rel_se, self._limit
        if s.p50 is not None and s.p95 is not None:
            self.base_p50 = self.p50_ema = s.p50
            self.base_p95 = self.p95_ema = s.p95
        self.rtprop_since = now

    # -- per state --------------------------------------------------------------------------------
    def _step_init(self, s: _Summary) -> None:
        """The first interval only yields RTprop: its rate includes filling the pipe from empty."""
        self.state = STARTUP
        if self.near:
            self._grow()
            return
        if s.pipe_full and not self._inflated(s):
            self._grow()

    @property
    def near(self) -> bool:
        """The unloaded mean latency under the noise floor: judged by rate, not latency. (Not RTprop:
        a host whose cache answers hits in 3 ms and misses in 100 ms has a queue that shows.)"""
        return self.base_lat is not None and self.base_lat < LATENCY_NOISE_FLOOR_S

    def _paid_off(self, s: _Summary, gain: float) -> bool:
        """More load raised the served rate substantially: BBR's rule, used for near hosts."""
        return self.served_before <= 0 or s.served_rate >= gain * self.served_before

    def _step_startup(self, s: _Summary) -> None:
        if self.near:
            # Latency says nothing here: grow while doubling the load still pays in rate.
            if s.pipe_full and self._paid_off(s, STARTUP_RATE_GAIN):
                self._grow()
            elif s.pipe_full:
                self.ceiling = float(self._limit)
                self._enter_probe_bw(CRUISE)
            return
        if self._congested(s):
            self._cut_to_estimate(s)
            # Rates measured during a ramp are rough: confirm the estimate with an early probe.
            self._enter_probe_bw(DRAIN, STARTUP_CONFIRM)
        elif s.pipe_full:
            self._grow()

    def _client_busy(self) -> bool:
        return self.client is not None and self.client.busy

    def _grow(self) -> None:
        if self._client_busy():
            # Our own event loop is saturated: the host may take more, but we could not use it.
            # Stay in STARTUP, so a passing lag (reading the manifest, a GC) only delays a doubling.
            return
        self.ceiling = min(float(self.p.C_max), self._limit * STARTUP_GAIN)
        self._set_limit(self.ceiling)
        if self._limit >= self.p.C_max:
            self._enter_probe_bw(CRUISE)

    def _step_cruise(self, s: _Summary, now: float) -> None:
        if self.phase == DRAIN:
            # This interval still holds the queue our probe or cut left behind: don't judge it, nor
            # the next while replies to requests sent before the cut keep coming (a deep queue).
            # Latency may still climb while that queue drains: the cut must beat the worst of it.
            if self.cut_mean is not None and s.mean is not None:
                self.cut_mean = max(self.cut_mean, s.mean)
            if not s.stale:
                self.phase = CRUISE
        elif not self.near and self._congested_in_cruise(s):
            if self._not_our_queue(s):
                # Cutting again would spiral down to C_min for nothing: hold, and judge from here on.
                self._rebaseline(s, now)
            else:
                self._cut_to_estimate(s)
                self._enter_probe_bw(DRAIN)
        elif self.strike:
            pass  # one marginally slow interval: wait for the next before acting
        elif now - self.rtprop_since > self.p.probe_rtt_period:
            self.state = PROBE_RTT
            self._set_limit(self.ceiling * PROBE_RTT_GAIN)
        elif self._unloaded_unseen():
            self.state = PROBE_RTT
            self._set_limit(self.p.C_min)  # at most C_init: the lightest load there is costs little
        else:
            self.cut_mean = None
            if s.pipe_full:
                self._count_down_to_probe(s.spans)

    def _unloaded_unseen(self) -> bool:
        """The unloaded latency was measured at the load we run now or a higher one (C_init above
        the host's capacity, or a cut by 429s that never went under it): it may hold our own queue,
        and no test against it could see that queue. PROBE_RTT measures it at C_min. (STARTUP
        measured it at C_init, so this happens only to hosts that run at C_init or under. A near
        host is judged by rate: its latency needs no such check.)"""
        return not self.near and self.base_load >= self._limit > self.p.C_min and self._limit <= self.p.C_init

    def _count_down_to_probe(self, spans: int) -> None:
        # Counted in usual interval lengths, not intervals: a host whose intervals wait for a
        # precise mean (a wide spread, few replies) would otherwise be probed ever more rarely.
        self.probe_countdown -= spans
        if self.probe_countdown <= 0:
            if self._pinned():
                self.probe_countdown = PROBE_EVERY  # nothing to probe until the cap is forgotten
            else:
                self._start_probe()

    def _start_probe(self) -> None:
        if self._client_busy():
            self._enter_probe_bw(CRUISE)  # as in _grow: more load would only queue in our loop
            return
        self.phase = PROBE_UP
        self.probe_countdown = PROBE_EVERY  # strict looks left while pinned under a cap
        self._set_limit(max(self.ceiling + 1, self.ceiling * PROBE_GAIN))

    def _pinned(self) -> bool:
        """At the most a remembered cap allows: a probe could not raise the limit."""
        return self._cap_remembered() and self.push is not None and self._limit >= self.push.cap - 1

    def _step_probe_up(self, s: _Summary) -> None:
        if self.near:
            if s.pipe_full and self._paid_off(s, PROBE_RATE_GAIN):
                self.ceiling = float(self._limit)  # the extra load paid: keep it, probe again
                if self._limit < self.p.C_max:
                    self._start_probe()
                    return
            self._enter_probe_bw(DRAIN)  # back to the ceiling
            return
        if self._congested(s):
            # The probe found the knee: the ceiling is what the host actually served in parallel.
            est = self._estimate(s)
            if est is not None and est < self._limit:
                self.ceiling = max(float(self.p.C_min), min(float(self.p.C_max), est))
            self._enter_probe_bw(DRAIN)
        elif s.pipe_full:
            # The host took the extra load without queueing: keep it and probe again right away.
            self.ceiling = float(self._limit)
            if self._pinned():
                # Judged strictly (any sign of a queue cuts) a few times at the cap, then as a
                # cruise: each strict look at an unchanged limit is one more chance to cut on noise.
                self.probe_countdown -= 1
                if self.probe_countdown <= 0:
                    self._enter_probe_bw(CRUISE)
            elif self._limit < self.p.C_max:
                self._start_probe()
            else:
                self._enter_probe_bw(CRUISE)
        else:
            self._enter_probe_bw(CRUISE)

    def _end_probe_rtt(self, s: _Summary, now: float) -> None:
        # Accept this interval's latencies as the new base even if higher: the host may have slowed.
        self._rebaseline(s, now)
        self.cut_mean = None
        self._enter_probe_bw(CRUISE)

    # -- helpers ----------------------------------------------------------------------------------
    def _enter_probe_bw(self, phase: str, probe_in: int = PROBE_EVERY) -> None:
        self.state = PROBE_BW
        self.phase = phase
        self.probe_countdown = probe_in
        self._set_limit(self.p.mu * self.ceiling)

    def _enter_cruise(self, now: float) -> None:
        self.win.reset(now, self.rtprop)  # replies from before the cut are stale
        self._enter_probe_bw(CRUISE)

    def _set_limit(self, value: float) -> None:
        # Round, not floor: the estimate is already conservative (p10 RTprop), and flooring it
        # costs a small host (capacity 5, estimate 4.5) a fifth of its throughput.
        if self._cap_remembered():
            assert self.push is not None
            value = min(value, self.push.cap - 1)  # stay under the level that drew a 429
        limit = max(self.p.C_min, min(self.p.C_max, round(value)))
        if limit < self._limit:
            self.lowered_at = self.now
        if limit != self._limit:
            self.raised_by = max(1.0, limit / self._limit)
        self._limit = limit


def _ema(old: float | None, new: float, alpha: float) -> float:
    return new if old is None else alpha * new + (1.0 - alpha) * old


def _lower(old: float | None, new: float) -> float:
    return new if old is None or new < old else old


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def make_host_limit(opts: Any, host: str, now: float, *, share: float = 1.0,
                    client: ClientLoad | None = None) -> HostLimit:
    """The policy for a newly seen host: PAARC, or a fixed C_init when PAARC is disabled.

    `share` is the part of the host this download may use (a host split over partitions that run
    at once): C_init and C_max are scaled by it, never under C_min.
    """
    params = PaarcParams.from_options(opts)
    if share < 1.0:
        params = _shared(params, share)
    if opts.enable_paarc:
        return PaarcController(params, now, client)
    return FixedLimit(params.C_init)


def _shared(p: PaarcParams, share: float) -> PaarcParams:
    c_max = max(p.C_min, round(p.C_max * share))
    c_init = min(max(p.C_min, round(p.C_init * share)), c_max)
    values = {**{name: getattr(p, name) for name in _PARAM_NAMES}, "C_init": c_init, "C_max": c_max}
    return _interned(*values.values())

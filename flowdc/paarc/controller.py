"""PAARC's controller: one per host, a pure state machine over intervals of samples.

The scheduler asks it for `limit()`, `hold_until()` and `min_gap()` before each dispatch, feeds it
one `Sample` per finished request, and calls `tick()` now and then. Nothing here does I/O or reads
a clock: `now` is always passed in, so tests/paarc_sim.py can drive it on virtual time.

Each closed interval (window.py) yields RTprop, the unloaded latencies (base_lat, base_p50,
base_p95), the served rate, and an estimate of the requests the host serves in parallel
(limit x base_lat / mean: Little's law twice). The limit sits at mu x ceiling; the ceiling is that
estimate where a queue first shows, raised by up-probes that find no queue. Only host signals
lower it: 429/503 (pushback.py keeps what they taught), bursts of timeouts/5xx/resets, and latency
that rose with our load. The algorithm in plain words, and why: docs/paarc.md.
"""

from __future__ import annotations

import math

from flowdc.paarc.bucketfit import RevealLog
from flowdc.paarc.limit import LOOP_BUSY_LAG_S, ClientLoad, HostCounters
from flowdc.paarc.params import PaarcParams
from flowdc.paarc.pushback import PACE_STEP_S, Pushback
from flowdc.paarc.window import (
    LATENCY_NOISE_FLOOR_S,
    MIN_LATENCIES,
    MIN_SAMPLES,
    PRECISION_WAIT,
    Summary,
    Window,
    ema,
    lower,
    usual_span,
)
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
STARTUP_REL_SE = 0.1  # STARTUP closes an interval once its mean is this precise (a doubling is judged coarser)
STARTUP_GAIN = 2.0  # grow fast while the host shows no queue: 8 -> 1000 in 7 intervals
STARTUP_RATE_GAIN = 1.3  # a doubling that raised the served rate this much was worth its latency
LAG_GAIN = 1.5  # a far host grows this much per interval while our loop lags: judged by rate, it may
LAG_RATE_GAIN = 1.3  # ... overshoot once (a hard cap at 2x capacity stays unmet) and keeps a raise
# that lifted its rate this much: it settles within 0.77-1.15x its capacity
KNEE_SHARE = 0.9  # a raise that lifted the rate by less than this share of its own factor passed the knee
PROBE_RATE_GAIN = 1.1  # likewise for an up-probe (1.25x the load, so at most 1.25x the rate)
PROBE_GAIN = 1.25  # an up-probe offers 25% more than the ceiling (at least one more request)
PROBE_EVERY = 8  # cruise intervals between up-probes: probing costs a little queueing each time
STARTUP_CONFIRM = 2  # cruise intervals before the first probe after STARTUP
PROBE_RTT_GAIN = 0.5  # PROBE_RTT halves the load so any standing queue drains
STEP_DOWN = 0.25  # an early PROBE_RTT steps the limit down by this share (at least one request)...
STEP_HOLD = 0.9  # ... while the rate by Little's law holds to this share of the step before
QUEUE_TOL = 0.1  # mean latency this far above base_lat means our own requests are queueing
QUEUE_TOL_SE = 4.0  # ... or this many standard errors of the difference (this interval's and the baseline's)
HINT_SE = 2.0  # a STARTUP doubling whose mean rose this many (and QUEUE_TOL) grows by half (_step_startup)
SEVERE = 1.2  # inflation this far past theta_50/theta_95 acts at once; milder must repeat
CUT_EFFECT = 0.05  # after a latency cut, mean latency must fall this much, or the slowness isn't ours
JUMP = 1.3  # a raise by more than this (a probe is 1.25x) leaves the next interval's queue half grown
KNEE_MARGIN = 0.98  # the interval that finds a queue ends early: its mean reads low, the estimate 1-2% high
COOLDOWN_RTPROPS = 5.0  # after a cut, wait this many round trips for in-flight replies to drain
UNKNOWN_RTPROP_S = 0.2  # stands in for RTprop before the first interval has measured it
STALL_LATENCIES = 10.0  # unanswered this many p95 latencies, a request no longer takes a slot...
STALL_MIN_S = 1.0  # ... and never sooner than this
FRESH_START_SHARE = 0.5  # first baselines from more replies on new connections than this are provisional
COHORT_MIN_RTPROP_S = 0.15  # a STARTUP step of a host this slow may be judged on its cohort's first replies...
COHORT_SPREAD = 1.2  # ... when its p95 is within this of its p50
RUN_GAP_RTPROPS = 2.0  # refusals this many RTprops apart or closer are one run (a burst or a storm)
RATE_EVIDENCE = 0.8  # refused under this share of a load lately served: the host limits by rate


class PaarcController:
    """Adaptive per-host concurrency limit; satisfies flowdc.paarc.limit.HostLimit."""

    __slots__ = (
        "_hold",
        "_limit",
        "base_lagged",
        "base_lat",
        "base_lat_se",
        "base_load",
        "base_p50",
        "base_p95",
        "base_provisional",
        "born",
        "busy_mark",
        "ceiling",
        "clean_level",
        "client",
        "connects_in_base",
        "cooldown_until",
        "counters",
        "cut_at",
        "cut_mean",
        "goodput",
        "intervals",
        "lag_peak",
        "last_inflight",
        "last_ok_inflight",
        "last_ok_ttfb",
        "little_before",
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
        "raised_at",
        "raised_by",
        "ramp",
        "refused_before",
        "reveal_log",
        "rtprop",
        "rtprop_since",
        "served_before",
        "stale_cap",
        "state",
        "stepping",
        "strike",
        "win",
    )

    def __init__(self, params: PaarcParams | None = None, now: float = 0.0, client: ClientLoad | None = None,
                 ramp: bool = True) -> None:
        self.p = params or PaarcParams.defaults()
        self.client = client  # the downloader's own load: no growth while it is the bottleneck
        self.ramp = ramp  # a host that refuses from cold is resumed on a ramp (not when others share it)
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
        self.raised_at = 0.0  # when the limit last went up: older requests went out under less
        self.raised_by = 1.0  # the factor of the last change of the limit if it rose, else 1
        self.clean_level = 0  # the highest STARTUP limit whose cohort showed no queue (0: none yet)
        self.cut_mean: float | None = None  # mean latency when latency last made us cut
        self.rtprop: float | None = None
        self.rtprop_since = now
        self.base_lat: float | None = None
        self.base_provisional = False  # the baselines are a run's start's (see _measure)
        self.connects_in_base = False  # ... read on connections opened for their requests (_base_from_pooled)
        self.base_lagged = False  # ... and hold an interval whose lag could hide a queue (_unloaded_unseen)
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
        self.win = Window(now)
        self.busy_mark = 0  # the client's busy ticks when this interval began
        self.lag_peak = 0.0  # the client's highest (smoothed) lag at this interval's ticks
        self.now = now
        self.push: Pushback | None = None
        self.refused_before = False
        # A host that refuses its cold start has its bucket's rate read from these replies too.
        self.reveal_log: RevealLog | None = RevealLog() if ramp else None
        self.served_before = 0.0  # served rate of the interval before the last raise
        self.little_before = 0.0  # ... and by Little's law (limit / mean latency; 0: unknown)
        self.memory_s = self.p.probe_rtt_period  # how long the next pushback lesson is kept
        self.stale_cap = 0  # the cap of a lesson that expired (0: none)
        self.stepping = False  # PROBE_RTT steps down to the host's capacity instead of halving

    # -- the HostLimit protocol -----------------------------------------------------------------
    def limit(self) -> int:
        return self._limit

    def hold_until(self) -> float:
        return self._hold

    def min_gap(self, now: float | None = None) -> float:
        """Seconds from a send at `now` to the next one to this host (0: no pacing). The reveal's ramp
        needs the send's own time: the latest reply's can be a doubling old, and the ramp's reading
        of a bucket's rate, which assumes the sends kept to the ramp, then read 15-20% high."""
        push = self.push
        if push is None or push.pace <= 0:
            return 0.0
        if push.ramping:
            return push.ramp_gap(self.now if now is None else max(now, self.now), self._hold)
        return 1.0 / push.pace

    def rows_left(self, left: int) -> None:
        if self.push is not None and self.push.pace > 0:
            self.push.rows_left(left, self.now)

    def stall_after(self) -> float:
        """After this long unanswered a request is stuck on its object and waits for its timeout
        without a slot: a few stuck URLs cannot block a host."""
        typical = self.p95_ema or self.base_lat or self.rtprop or self.last_ok_ttfb
        return math.inf if typical is None else max(STALL_MIN_S, STALL_LATENCIES * typical)

    def on_sample(self, now: float, sample: Sample) -> None:
        self.now = now
        log = self.reveal_log
        if log is not None and sample.ttfb is not None and not log.note(now - sample.ttfb, now,
                                                                         sample.signal is not Signal.OVERLOAD):
            self.reveal_log = None  # too long a cold start for a small bucket's
        self.counters.count(sample.signal)
        self.last_inflight = sample.inflight
        if sample.signal is Signal.OVERLOAD:
            sent = None if sample.ttfb is None else now - sample.ttfb
            if self._refusal_is_about_host(sent, sample.retried):
                known = self._remember_pushback(now, sent, sample.inflight, sample.retry_after)  # before the hold
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
        shows_load = sample.signal is Signal.OK and self._load_shown(now, sample.ttfb)
        if shows_load:
            self.last_ok_inflight = sample.inflight
        if self.push is not None and sample.ttfb is not None:
            self.push.reply(refused=False)
            if shows_load:
                self.push.ok_level = max(self.push.ok_level, sample.inflight)
            if sample.signal is Signal.OK:
                if self.push.count_served_after(now - sample.ttfb):
                    self.reveal_log = None  # no bucket to read: the refusals were about their URLs
                if self.push.ramping and self.push.before_ramp() and now - sample.ttfb <= self.push.acted_at:
                    self.push.count_burst()
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
        log = self.reveal_log
        if log is not None and log.due:
            if self.last_inflight <= 1:
                self._reread_bucket(log)
            elif now >= self._hold:
                self.reveal_log = None  # some never answered: a reading without them would err
        if self.client is not None and self.client.lag_s > self.lag_peak:
            self.lag_peak = self.client.lag_s
        if self.state == BACKOFF:
            if now >= self.cooldown_until:
                self._enter_cruise(now)
            return
        if self.connects_in_base:
            self._base_from_pooled()
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
            return self._cohort_clean() or (self.win.due(now, self.rtprop, self.base_lat, STARTUP_REL_SE)
                                             and self._step_answered(now))
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

    def _load_shown(self, now: float, ttfb: float | None) -> bool:
        """Whether an OK's count in flight shows a load the host took (a refusal under it later says
        "by rate"). Not in the cold start: its count holds requests still waiting on their connects,
        and a capped host answered OK with twice its cap "in flight" while our loop lagged. Nor in the
        burst a refusal cut: the same count drew the refusal."""
        if self.state == INIT:
            return False
        sent = None if ttfb is None else now - ttfb
        if sent is not None and sent < self.raised_at:
            return False  # sent under a lower limit: the count holds requests sent since
        return not (self.state == BACKOFF and self._before_cut(sent))

    def _refusal_is_about_host(self, sent: float | None, retried: bool = False) -> bool:
        """Count a 429/503 and tell whether it speaks for the host or only for its URL (docs/paarc.md:
        "Is a refusal about the host or about one URL?")."""
        push = self.push
        if push is None:
            # A record made afresh keeps the pace's floor, and the load last served (a refusal under
            # it next says "by rate").
            self.push = Pushback(best_rate=self.goodput, ok_level=self.last_ok_inflight)
            self.push.refused(self.now, retried, self._run_gap())
            # Only a host's very first refusal counts unseen: once its record has expired, a
            # refusal at whatever load we happen to run must show a share like any other.
            first, self.refused_before = not self.refused_before, True
            return first
        push.refused(self.now, retried, self._run_gap())
        if self.state == BACKOFF and self._before_cut(sent):
            return True  # the rest of the burst that made us back off: it lowers the remembered cap
        return push.speaks_for_host(sent)

    def _run_gap(self) -> float:
        """Refusals closer than this belong to one run: a burst's come within a round trip."""
        return RUN_GAP_RTPROPS * (self.rtprop or UNKNOWN_RTPROP_S)

    def _remember_pushback(self, now: float, sent: float | None, inflight: int,
                           retry_after: float | None = None) -> float | None:
        """Learn from a 429/503 what a cut alone would forget: a cap, or a pace for a host that limits
        by rate. Returns the limit to fall back to when a probe found a forgotten cap where it was."""
        push = self.push
        assert push is not None  # _refusal_is_about_host made it
        remembered = now < push.until and push.cap > 0
        if self.state == BACKOFF and self._before_cut(sent):
            if remembered and push.cap > self.p.C_min and not push.recalled and push.sent_before_run(sent):
                push.cap -= 1  # one more of the same burst refused: the host took one fewer
                self._set_limit(self._limit)  # and stay under it from now on
            if push.reveal_wait and not push.ramping and push.pace <= 0 and push.refusals_were_the_host():
                # A second refusal of the cold start's burst: the host, not one URL, refused it.
                push.reveal(push.reveal_wait, self.counters.ok)
            return None
        if sent is not None and sent < push.acted_at:
            return None  # sent before the last cap or pace took effect: it cannot judge them
        # Refused well under a load lately served, or at C_min: the host limits requests per second.
        paced = push.pace > 0  # a paced host's record outlives the memory: the pace is its lesson
        under_served = inflight < RATE_EVIDENCE * push.ok_level or self._limit <= self.p.C_min
        # On the reveal's ramp the pace sets how many are in flight: under the cap it drew, refused
        # all the same, the host counts requests per second.
        under_served = under_served or (push.ramping and inflight < push.cap)
        by_rate = (remembered or paced) and under_served
        accepted = push.accepted_rate(now) if by_rate else None
        if by_rate and push.ramping and sent is not None and push.ramp_ok >= MIN_LATENCIES:
            # The refusal that ends the reveal's ramp. (After fewer replies, too few sends to read a
            # rate from: the meter's bound and a guess, as without a ramp.)
            accepted = push.ramp_rate(sent, push.ramp_ok + max(inflight - 1, 0))
            if self.reveal_log is not None:
                self.reveal_log.await_rest(sent, accepted)  # read again once all sent before it answered
        found_again: int | None = None  # a forgotten cap, found where it was
        if not remembered:
            prior_cap = push.cap or self.stale_cap
            self.memory_s = push.lesson_length(self.memory_s, self.p.probe_rtt_period, prior_cap, inflight, accepted)
            if self.memory_s > self.p.probe_rtt_period and not by_rate:
                # The probe may be a few past the cap by the time the refusals' share counted:
                # keep the earlier finding, or the limit would not be pinned under it.
                found_again = min(prior_cap, inflight)
        if remembered:
            if not by_rate and push.ok_level < inflight < push.cap:
                # Refused past every load the host served, under the cap remembered: the cap, found
                # lower (a cold start's burst counts one high when a reply frees a slot while it
                # goes out). Back to what it served, not a blind cut.
                found_again = inflight
            push.cap = min(push.cap, inflight)
        else:
            push.cap = inflight if found_again is None else found_again
        push.recalled = found_again is not None
        push.until = now + self.memory_s
        if by_rate:
            hint = self.last_ok_ttfb or (None if sent is None else now - sent)  # not the 429's: 1 ms
            push.set_pace(now, accepted, self.counters.ok, now - self.born, self._send_rate(ttfb_hint=hint))
        elif self.ramp and not (remembered or paced) and retry_after and self.intervals == 0:
            push.reveal_wait = retry_after  # refused from cold: a cap or a bucket, if the burst's next is refused too
            push.refused_from = now if sent is None else sent
        push.acted_at = now
        push.restart_meter(max(now, self._hold))
        return None if found_again is None else float(found_again - 1)

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
        """Grow a paced host's pace a little; drop the record once it is spent."""
        push = self.push
        if push is None:
            return
        if push.grow_pace(now, self._hold, self._send_rate(ttfb_hint=self.last_ok_ttfb)):
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

    def _reread_bucket(self, log: RevealLog) -> None:
        """The ramp's model takes what the cold start served for the bucket; its refill meanwhile
        (our sends late on a busy start) read the polite bench's 100/s bucket as 58-87/s. Every reply
        of the cold start and the ramp bounds the rates a bucket could have; the reading is moved
        into those bounds before the hold ends."""
        self.reveal_log = None
        if self.push is not None and self.push.ramp_read:
            self.push.reread(log.reread())

    # -- one interval -----------------------------------------------------------------------------
    def _close_interval(self, now: float) -> None:
        s = self.win.summarize(now, self._limit)
        self.intervals += 1
        self.goodput = s.ok_rate
        if self.reveal_log is not None and (self.push is None or not (self.push.ramping or self.push.reveal_wait)):
            self.reveal_log = None  # past its cold start unrefused: no reveal to read
        if s.failing:
            self._reset_window(now)
            self._overload(now, None, None)
            return
        # Our own event loop ran late during this interval: every latency in it holds our queue,
        # not the host's, so it cannot tell a queue at the host (nor its absence). The served rate
        # still can: such an interval is judged as a near host's is.
        lagged = self._lag_hides_queue(s.mean)
        # Requests sent at this limit all answered with no queue: a load the host is known to take,
        # unless the baselines they were judged against are a run's start's (see _measure).
        proven = self.state == STARTUP and not self.base_provisional and self._cohort_clean()
        self._measure(s, self._client_lagged(), lagged)
        if self.push is not None:
            self.push.best_rate = max(self.push.best_rate, s.ok_rate)  # the pace's floor follows it
        self._adjust_pace(now)
        little = self._limit / s.mean if s.mean and s.pipe_full else 0.0
        # A step down is judged once the queue it left has drained, against the level above it.
        draining = self.stepping and s.stale
        self._reset_window(now)
        if self.state == INIT:
            self._step_init(s, lagged)
        elif self.state == STARTUP:
            self._step_startup(s, lagged, little, proven)
        elif self.state == PROBE_RTT:
            if self.stepping:
                self._step_down(s, now, little)
            else:
                self._end_probe_rtt(s, now)
        elif self.phase == PROBE_UP:
            self._step_probe_up(s, lagged, little)
        else:
            self._step_cruise(s, now, lagged)
        if self.state == STARTUP and self._cohort_pays():
            self.win.follow_cohort(self._limit)
        if not draining:
            self.served_before, self.little_before = s.served_rate, little  # what the next raise has to beat

    def _measure(self, s: Summary, lagged: bool = False, lag_hid_queue: bool = False) -> None:
        """Smooth the interval's latencies with alpha_ema; the baselines are minima of the smoothed
        series (RTprop: of raw p10), since the last PROBE_RTT.

        The first baselines are provisional when they hold a run's start, when every host of a long
        manifest starts at once: our own loop lagged (a 16-slot 80-ms host read 130 ms), or most
        replies came on connections opened for them, every host accepting its first connections at
        once (a 24-slot 120-ms host read 180-190 ms with our loop on time). A later interval faster
        than them starts the series afresh, even one in which our loop lagged (the lag only adds
        latency); the first that did not lag ends their provisional standing. Smoothed from the slow
        value, the baseline stayed far enough above the host's own latency to hide a queue of a third
        to a half of its capacity, and a doubling from there met its hard cap."""
        if self.base_provisional:
            if s.mean is not None and self.base_lat is not None and s.mean < self.base_lat:
                self.mean_ema = self.p50_ema = self.p95_ema = None
                self.base_lat = self.base_p50 = self.base_p95 = None
                self.base_load = 0
                self.base_lagged = self.connects_in_base = False
            self.base_lagged = self.base_lagged or lag_hid_queue
            self.base_provisional = lagged
        elif self.base_lat is None and (lagged or s.fresh_share > FRESH_START_SHARE):
            self.base_provisional, self.base_lagged = True, lag_hid_queue
            self.connects_in_base = s.fresh_share > FRESH_START_SHARE
        if s.p10 is not None and (self.rtprop is None or s.p10 <= self.rtprop):
            self.rtprop = s.p10
        a = self.p.alpha_ema
        if s.mean is not None:
            var = s.rel_se * s.rel_se
            first = self.mean_ema is None
            self.mean_ema = ema(self.mean_ema, s.mean, a)
            self.mean_ema_var = var if first else a * a * var + (1 - a) ** 2 * self.mean_ema_var
            if self.base_lat is None or self.mean_ema < self.base_lat:
                self.base_lat, self.base_lat_se = self.mean_ema, math.sqrt(self.mean_ema_var)
            self.base_load = min(self.base_load or self._limit, self._limit)
        if s.p50 is not None and s.p95 is not None:
            self.p50_ema = ema(self.p50_ema, s.p50, a)
            self.p95_ema = ema(self.p95_ema, s.p95, a)
            self.base_p50 = lower(self.base_p50, self.p50_ema)
            self.base_p95 = lower(self.base_p95, self.p95_ema)

    def _base_from_pooled(self) -> None:
        """INIT's baselines hold the connects (and TLS handshakes) of its requests: a 16-slot,
        80-ms host read 190 ms, its doublings to 16 and 32 were judged against that and looked
        unloaded, and the one to 64 met its hard cap (32 429s, then twice its capacity until the
        next PROBE_RTT). The requests INIT sent once those connections were open answer early in
        the first STARTUP interval, at C_init: once MIN_SAMPLES of them did, they time the host's
        round trip, and the first step is judged against them. The ramp does not wait for it.
        (When the first interval closed before that, the next one's early replies, sent at its
        level, do the same: restricted to the first, a 24-slot host with 250-ms connects still
        overshot. They only ever lower the baseline. Their fastest stands in for RTprop until an
        interval's p10 takes over.)"""
        win = self.win
        if win.before_n < MIN_SAMPLES:
            return
        self.connects_in_base = False
        mean = win.before_sum / win.before_n
        if self.base_lat is None or mean >= self.base_lat:
            return
        self.base_lat = self.mean_ema = mean
        self.base_p50 = self.base_p95 = self.p50_ema = self.p95_ema = None  # the next close sets them
        if self.rtprop is not None and win.before_min < self.rtprop:
            self.rtprop = win.before_min
            win.settle = min(win.settle, self.rtprop)

    def _inflated(self, s: Summary, factor: float = 1.0) -> bool:
        """The seed's test against the host's own spread (not RTprop): p50 or p95 TTFB well above
        their unloaded values, and the mean up too."""
        if self.base_p50 is None or self.base_p95 is None or s.p50 is None or s.p95 is None:
            return False
        if not (s.p50 > factor * self.p.theta_50 * self.base_p50 or s.p95 > factor * self.p.theta_95 * self.base_p95):
            return False
        # A percentile that rose alone is a chance clutch of slow objects: a queue delays every reply.
        return self._mean_rose(s, QUEUE_TOL_SE)

    def _queued(self, s: Summary) -> bool:
        """Milder: mean latency above the unloaded mean means our extra requests only wait."""
        return self._mean_rose(s, QUEUE_TOL_SE, QUEUE_TOL)

    def _mean_rose(self, s: Summary, z: float, floor: float = 0.0) -> bool:
        """Mean TTFB above the unloaded mean by z standard errors of the difference (and by floor)."""
        return s.mean is not None and self._above_base(s.mean, s.rel_se, z, floor)

    def _above_base(self, mean: float, rel_se: float, z: float, floor: float) -> bool:
        if self.base_lat is None:
            return False
        noise = math.sqrt(rel_se * rel_se + self.base_lat_se * self.base_lat_se)
        return mean > (1 + max(floor, z * noise)) * self.base_lat

    def _congested(self, s: Summary) -> bool:
        """Any sign of a queue: used right after we raised the load on purpose."""
        return self._inflated(s) or self._queued(s)

    def _congested_in_cruise(self, s: Summary) -> bool:
        """At a steady limit: act at once on severe inflation, on marginal signs only when two
        intervals running agree (one is more often noise than a queue)."""
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

    def _estimate(self, s: Summary) -> float | None:
        """Requests the host serves in parallel, by Little's law twice: limit x base_lat / mean with
        the pipe full, else rate x base_lat; after a jump in the limit the lower of the two."""
        if self.base_lat is None:
            return None
        by_rate = s.served_rate * self.base_lat if s.served_rate > 0 else None
        if s.mean is None or not s.pipe_full:
            return by_rate
        by_latency = KNEE_MARGIN * self._limit * self.base_lat / s.mean
        jumped = self.raised_by > JUMP
        return by_latency if by_rate is None or not jumped else min(by_latency, by_rate)

    def _cut_to_estimate(self, s: Summary, floor: float = 0.0) -> None:
        """Past the knee: jump to the capacity estimate; by beta when the estimate is not lower (the
        unloaded latency itself held a queue). Never under `floor`, a load known to queue nothing."""
        est = self._estimate(s)
        if est is None or est >= self._limit:
            est = self._limit * self.p.beta
        self.ceiling = max(float(self.p.C_min), est, floor)
        self._set_limit(self.p.mu * self.ceiling)
        self.cut_mean = s.mean

    def _not_our_queue(self, s: Summary) -> bool:
        """Still slow after our cut had time to drain: the host itself got slower, not queued by us."""
        return self.cut_mean is not None and s.mean is not None and s.mean >= (1 - CUT_EFFECT) * self.cut_mean

    def _rebaseline(self, s: Summary, now: float) -> None:
        """Take this interval's latencies as the new unloaded ones (what PROBE_RTT does on a timer);
        the smoothed series restart here too."""
        if s.p10 is not None:
            self.rtprop = s.p10
        if s.mean is not None:
            self.base_lat = self.mean_ema = s.mean
            self.base_lat_se, self.mean_ema_var, self.base_load = s.rel_se, s.rel_se * s.rel_se, self._limit
            self.base_lagged = False
        if s.p50 is not None and s.p95 is not None:
            self.base_p50 = self.p50_ema = s.p50
            self.base_p95 = self.p95_ema = s.p95
        self.rtprop_since = now

    # -- per state --------------------------------------------------------------------------------
    def _step_init(self, s: Summary, lagged: bool = False) -> None:
        """The first interval only yields RTprop: its rate includes filling the pipe from empty."""
        self.state = STARTUP
        if self.near:
            self._grow()
            return
        if s.pipe_full and not self._inflated(s):
            self._grow(LAG_GAIN if lagged else STARTUP_GAIN)

    @property
    def near(self) -> bool:
        """The unloaded mean latency under the noise floor: judged by rate, not latency. (Not RTprop:
        a host whose cache answers hits in 3 ms and misses in 100 ms has a queue that shows.)"""
        return self.base_lat is not None and self.base_lat < LATENCY_NOISE_FLOOR_S

    def _paid_off(self, s: Summary, gain: float, little: float | None = None) -> bool:
        """More load raised the served rate substantially: BBR's rule, used for near hosts.

        With `little` (this interval's limit / mean latency) the rate is Little's law's, for a far
        host while our own loop lags: the few replies of a slow host count too noisily (a 4-slot host
        seemed to gain 1.5x from a doubling), and a latency ratio of two intervals that lagged alike
        cancels most of our own delay. A far host gets no raise on a rate it never measured."""
        if little is not None:
            return self.little_before > 0 and little >= gain * self.little_before
        return self.served_before <= 0 or s.served_rate >= gain * self.served_before

    def _step_startup(self, s: Summary, lagged: bool = False, little: float = 0.0, proven: bool = False) -> None:
        if self.near or lagged:
            # Latency says nothing here: grow while doubling the load still pays in rate.
            if self.near and s.pipe_full and self._paid_off(s, STARTUP_RATE_GAIN):
                self._grow()
            elif not self.near and s.pipe_full and self._paid_off(s, LAG_RATE_GAIN, little):
                gain = little / self.little_before
                if gain < KNEE_SHARE * self.raised_by:
                    # The rate rose by less than the load: the raise passed the knee, which lies at
                    # the level before it times the rate's gain. Growing on would overshoot a hard cap.
                    self.ceiling = max(float(self.p.C_min), self._limit / self.raised_by * gain)
                    self._enter_probe_bw(DRAIN, STARTUP_CONFIRM)
                else:
                    self._grow(LAG_GAIN)
            elif s.pipe_full:
                # A far host whose doubling did not pay was full before it: back to that level (a
                # near host keeps it: its queue is one of microseconds).
                self.ceiling = float(self._limit) if self.near else max(self.p.C_min, self._limit / self.raised_by)
                self._enter_probe_bw(CRUISE)
            return
        if self._congested(s) or self._step_queued():
            # Rates measured during a ramp are rough (a 32-slot, 300-ms host was put at 28): the cut
            # keeps at least a level whose cohort showed no queue, and an early probe confirms it.
            self._cut_to_estimate(s, floor=self.clean_level)
            self._enter_probe_bw(DRAIN, STARTUP_CONFIRM)
        elif s.pipe_full:
            if proven:
                # Only a cohort proves a level: an interval closed on its first replies mostly holds
                # requests sent before the raise (a 100-slot host "showed no queue" at 256).
                self.clean_level = self._limit
            # A mean up by a tenth, short of proof over a STARTUP interval's few replies, most often
            # is the knee: the interval mixes replies to requests sent before the doubling with a few
            # queued ones. Doubled again from there, an 8-slot host with a hard cap of 24 met it (a
            # 2-s Retry-After) in most polite runs; half again more stays under a cap of 3x capacity.
            self._grow(LAG_GAIN if self._mean_rose(s, HINT_SE, QUEUE_TOL) else STARTUP_GAIN)

    def _slow(self) -> bool:
        """A host whose round trip is long enough (COHORT_MIN_RTPROP_S) for its cohorts to be
        followed: a queue there delays each reply by whole round trips."""
        return not self.near and self.rtprop is not None and self.rtprop >= COHORT_MIN_RTPROP_S

    def _step_answered(self, now: float) -> bool:
        """A slow host's STARTUP step is judged once MIN_SAMPLES of the requests sent since it
        answered, or the interval is failing, or it waited PRECISION_WAIT usual spans (a host short
        of work). Over its usual span of 4 RTprops, the replies at a host queued far past its
        capacity are nearly all to requests sent before the step: a 4-slot, 400-ms host doubled from
        8 to 16 read 760 ms for a 600-ms baseline, passed, and was doubled to 32; thirty such hosts
        took 950 of a run's 1000 requests in flight, and starved the hosts with work for 1.5 s."""
        win = self.win
        return (not self._slow() or win.answered >= MIN_SAMPLES or win.failing()
                or now - win.start >= PRECISION_WAIT * usual_span(self.rtprop))

    def _step_queued(self) -> bool:
        """The replies to requests sent since a slow host's STARTUP step show a queue, however
        few of them are in the interval's own latencies (see _step_answered)."""
        cohort = self.win.cohort_so_far() if self._slow() else None
        return cohort is not None and self._cohort_queued(cohort)

    def _cohort_clean(self) -> bool:
        """A STARTUP step may close early: a limit's worth of the requests sent since the doubling
        answered, and no queue shows in their latency. They are the ones a queue delays first: at
        a host with a cap of twice its capacity, a doubling past the knee queues all of them. A
        queue that shows is judged over the usual span, as before: the cohort met it at its worst,
        and Little's law on it would put the knee too low. Not while our own loop lags: latency
        then holds our queue (a 16-slot, 80-ms host read 220 ms at a run's start, and cohorts
        judged against that doubled it past its hard cap)."""
        cohort = self.win.cohort_mean()
        if cohort is None or self.base_lat is None or self._lag_hides_queue():
            return False
        return not self._cohort_queued(cohort)

    def _cohort_queued(self, cohort: tuple[float, float]) -> bool:
        """A cohort's (mean latency, relative standard error) shows a queue: an interval's test (_queued)."""
        mean, rel_se = cohort
        return self._above_base(mean, rel_se, QUEUE_TOL_SE, QUEUE_TOL)

    def _cohort_pays(self) -> bool:
        """A slow host (each usual interval lasts a second or more, each doubling as long) whose
        replies take about the same time: p95 near p50, so the first of a cohort speak for all of
        it (with a wide spread the fast ones come first, and a cohort cut short reads low). Right
        after INIT the baselines may be a run's start's (provisional, see _measure): the cohort is
        judged against them as the usual span would be, only sooner, and the interval's close sets
        them afresh as any first unlagged interval does."""
        return (self._slow()
                and self.base_p50 is not None and self.base_p95 is not None
                and self.base_p95 <= COHORT_SPREAD * self.base_p50)

    def _client_busy(self) -> bool:
        """Our own event loop is the bottleneck now. A near host, judged by rate alone, then gets
        no more load (it would only lengthen our queue); a far one still may, when its rate pays."""
        return self.near and self.client is not None and self.client.busy

    def _client_lagged(self) -> bool:
        """The client was the bottleneck at some tick of the current interval, or its own lag is a
        fair share of this host's unloaded latency: latencies read now may hold our own queue. The
        baselines take none of them for good (see _measure)."""
        client = self.client
        if client is None:
            return False
        if self._saturated_this_interval(client):
            return True
        return self.base_lat is not None and client.lag_s > QUEUE_TOL * self.base_lat

    def _saturated_this_interval(self, client: ClientLoad) -> bool:
        """Our loop is saturated now, or was at some tick since this interval began, or has stalled
        past its next tick (which has yet to run)."""
        return client.busy or client.busy_ticks > self.busy_mark or client.overdue(self.now) > LOOP_BUSY_LAG_S

    def _lag_hides_queue(self, latency: float | None = None) -> bool:
        """Our own lag is, or was at some tick of the current interval, a fair share of this host's
        unloaded latency: then a rise in latency may be our loop's, not the host's queue (a 2-ms lag
        reads as a 25% queue at an 8-ms host, nothing at a 300-ms one). A saturated tick
        (LOOP_BUSY_LAG_S) counts only where its lag was such a share: at queue_tail's 300-ms host
        nearly every 1.2-s interval of a run's start held one, and its ramp waited a whole interval
        at each step. Before the unloaded latency is known, only a saturated tick counts, and given
        `latency` (the first interval's mean) only where its lag was a tenth of it."""
        client = self.client
        if client is None:
            return False
        busy_here = self._saturated_this_interval(client)
        lag_now = max(client.lag_s, client.overdue(self.now))
        if self.base_lat is None:
            return busy_here and (latency is None or max(self.lag_peak, lag_now) > QUEUE_TOL * latency)
        fair_share = QUEUE_TOL * self.base_lat
        return lag_now > fair_share or (busy_here and self.lag_peak > fair_share)

    def _reset_window(self, now: float) -> None:
        self.win.reset(now, self.rtprop)
        if self.client is not None:
            self.busy_mark = self.client.busy_ticks
            self.lag_peak = self.client.lag_s

    def _grow(self, gain: float = STARTUP_GAIN) -> None:
        if self._client_busy():
            # Our own event loop is saturated: the host may take more, but we could not use it.
            # Stay in STARTUP, so a passing lag (reading the manifest, a GC) only delays a doubling.
            return
        self.ceiling = min(float(self.p.C_max), self._limit * gain)
        self._set_limit(self.ceiling)
        if self._limit >= self.p.C_max:
            self._enter_probe_bw(CRUISE)

    def _step_cruise(self, s: Summary, now: float, lagged: bool = False) -> None:
        if self.phase == DRAIN:
            # This interval still holds the queue our probe or cut left behind: don't judge it, nor
            # the next while replies to requests sent before the cut keep coming (a deep queue).
            # Latency may still climb while that queue drains: the cut must beat the worst of it.
            if self.cut_mean is not None and s.mean is not None:
                self.cut_mean = max(self.cut_mean, s.mean)
            if not s.stale:
                self.phase = CRUISE
        elif not self.near and not lagged and self._congested_in_cruise(s):
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
        elif not lagged and self._unloaded_unseen():
            # At C_min this cost a small slow host half its rate for a long interval: step down instead.
            self.state, self.stepping = PROBE_RTT, True
            self._set_limit(self._step_below(self._limit))
        else:
            self.cut_mean = None
            if s.pipe_full:
                self._count_down_to_probe(s.spans)

    def _unloaded_unseen(self) -> bool:
        """The unloaded latency was measured at the load we run now or a higher one, so it may hold
        our own queue: an early PROBE_RTT steps down to find it (not for near hosts: judged by rate).
        Either C_init was past the host's capacity, or the baselines are a run's start's, taken
        while our own loop lagged enough to hide a queue: a 16-slot 80-ms host took 105-108 ms
        for its unloaded latency, and cruised at 21-29 for good, a third to a half over capacity.
        (A baseline within QUEUE_TOL of RTprop, the lowest decile read, hides no queue worth the
        probe: the host's unloaded mean is no lower than that.)"""
        if self.near or self._limit <= self.p.C_min:
            return False
        if self.base_lagged:
            base, floor = self.base_lat, self.rtprop
            return base is not None and floor is not None and base > (1 + QUEUE_TOL) * floor
        return self.base_load >= self._limit and self._limit <= self.p.C_init

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

    def _step_probe_up(self, s: Summary, lagged: bool = False, little: float = 0.0) -> None:
        if self.near or lagged:
            if s.pipe_full and self._paid_off(s, PROBE_RATE_GAIN, None if self.near else little):
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

    def _step_below(self, limit: int) -> int:
        return max(self.p.C_min, limit - max(1, round(limit * STEP_DOWN)))

    def _step_down(self, s: Summary, now: float, little: float) -> None:
        """The baselines were only ever measured under our own queue (C_init above the host's
        capacity). Step down while the rate holds: with a standing queue, fewer requests in flight
        only wait less (Little's law: limit / mean latency stays the host's rate). The first step
        at which the rate falls ran under capacity, so without our queue: its latencies are the
        unloaded ones, and the rate before it times that latency is the capacity. A host that binds
        the makespan so spends one interval a step under its capacity, not one at C_min."""
        if s.stale:
            return  # replies to requests sent before the step still hold the old queue: wait
        held = self.little_before > 0 and little >= STEP_HOLD * self.little_before
        if held and self._limit > self.p.C_min:
            self._set_limit(self._step_below(self._limit))
            return
        rate_above = self.little_before
        self._rebaseline(s, now)
        self.stepping = False
        if self.base_lat is not None and rate_above > 0:
            self.ceiling = max(float(self.p.C_min), min(self.ceiling, rate_above * self.base_lat))
        self.cut_mean = None
        self._enter_probe_bw(CRUISE)

    def _end_probe_rtt(self, s: Summary, now: float) -> None:
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
        self._reset_window(now)  # replies from before the cut are stale
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
        elif limit > self._limit:
            self.raised_at = self.now
        if limit != self._limit:
            self.raised_by = max(1.0, limit / self._limit)
        self._limit = limit


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)

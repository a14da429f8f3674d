"""The rate-limit memory: what a host's 429/503s taught, and the send pace of a host that limits by rate.

Only hosts that pushed back carry a `Pushback`, so the common controller stays small. It decides
whether a refusal speaks for the host or only for its URL, keeps the in-flight level that drew the
refusals (the cap), and for a host that counts requests per second, meters the rate it accepts,
paces sends under it and lets the pace creep up while the host stays quiet. A host that refused
its cold start is resumed on a doubling pace (the reveal's ramp), whose end tells a token bucket's
rate. The controller decides
when a lesson is learned and what it does to the concurrency limit. Why each rule is as it is:
docs/paarc.md, "Pushback memory".
"""

from __future__ import annotations

import math

from flowdc.paarc.window import MIN_INTERVAL_S, MIN_LATENCIES

PACE_MARGIN = 0.9  # a rate-limited host is paced this far under the rate it accepted
PACE_CUT = 0.5  # without a measured rate (refusals within a burst), halve: few steps, each a hold
PACE_FLOOR = 0.5  # never pace under this share of the best rate the host delivered (no ratchet to nothing)
# ... nor, while it has delivered nothing, under this many requests a second: a host that answered
# 503 to everything (no Retry-After) had its pace halved at every reply, to one request in minutes,
# and a run of 10 rows never ended.
PACE_FLOOR_UNSERVED = 1.0
PACE_GAIN = 1.03  # paced hosts are offered this much more per quiet interval...
PACE_SEEK_GAIN = 1.06  # ... or this much while no refusal has yet shown the rate the host accepts
PACE_STEP_S = 0.1  # ... and at least this often while quiet, whatever the intervals do
PACE_CAP_MARGIN = 0.95  # ... but not past this share of the rate that drew 429s (the ceiling; it creeps)
PACE_DROP = 1.5  # an expired record whose pace is this far over what the limit allows no longer binds: dropped
# A paced host quiet this long at its ceiling lets the ceiling creep up (after 2 s, a bucket read 12%
# low took 7 s to reach its rate)...
CREEP_QUIET_S = 1.0
CREEP_QUIET_REPLIES = 50  # ... and this many replies long (a 2/s host would be refused every few s)
CREEP_STEP = 1.002  # ... by this much per pace step (2%/s) at first...
CREEP_GIVEBACK = 1.02  # ... and each refusal takes 2% back...
CREEP_MIN = 0.85  # ... down to this share of the measured rate (a burst in the meter reads high)
CREEP_MAX_DOUBLINGS = 3  # the creep doubles its speed per quiet CREEP_QUIET_S, up to 16%/s
METER_MIN_S = 0.5  # an accepted rate needs this much unheld time behind it (a refilled burst fades)
METER_SPAN_S = 1.0  # the accepted-rate meter forgets older replies past this span
PUSHBACK_MIN_REPLIES = 20  # a share over fewer replies is noise (the first refusal from a host still counts)
PUSHBACK_SHARE = 0.15  # 429/503s must be this share of recent replies to teach a cap or a pace
PUSHBACK_STREAK = 4  # before PUSHBACK_MIN_REPLIES, this many fresh refusals in a row count
SHARE_MEMORY = 40  # replies the refused share is averaged over: a storm of fast 429s shows within ~10
SHARE_Z = 1.64  # ... as a one-sided 95% lower bound, so chance runs of per-URL refusals do not count
RAMP_DOUBLING_S = 0.1  # the reveal's ramp doubles the pace this often (0.05: overshoots drew 400 429s)...
# OKs to requests sent after a cold start's first refusal (before we acted on it) that a drained
# host may still give: a token or two refilled meanwhile. More say the refusals were about their URLs.
REFILL_SLACK = 2
# Sends this close to that refused one may reach the host in either order (one pass of our loop,
# fresh connections racing): only later ones tell.
BURST_SPREAD_S = 0.005
RAMP_MIN_BURST = 1  # ... from what the host served from cold per Retry-After, taken as at least this many
RECALL_SLACK = 1.25  # refused again within this factor of what a forgotten lesson said: the limit stands
MEMORY_MAX_PERIODS = 8  # a lesson confirmed again and again is kept up to this many probe_rtt_periods
TAIL_S = 2.0  # a paced host's last rows, this many seconds of them at its pace, go out at no more than its rate


class Pushback:
    """What a host's 429/503s taught: the in-flight level that drew them (kept for a while: probes
    stay under it), and, for a host that limits by rate, a send pace."""

    __slots__ = ("acted_at", "best_rate", "burst", "cap", "creep", "floor", "grown_at", "meter_ok", "meter_start",
                 "ok_level", "pace", "ramp_from", "ramp_ok", "ramp_read", "ramp_start", "ramping", "rate_cap",
                 "recalled", "refused_at", "refused_from", "replies", "reveal_s", "reveal_wait", "run_from", "seeking",
                 "served_after", "served_since", "share", "streak", "tail", "until")

    def __init__(self, best_rate: float = 0.0, ok_level: int = 0) -> None:
        self.cap = 0  # in-flight count at the 429 (that request included)
        self.recalled = False  # the cap was found again where it was: the rest of that burst adds nothing
        self.until = 0.0
        self.pace = 0.0  # requests per second; 0 = not paced
        self.rate_cap = 0.0  # accepted rate when the pace last drew a 429
        self.creep = 1.0  # how far quiet time has raised the pace's ceiling above rate_cap
        self.refused_at = -math.inf  # the latest 429/503, counted or not
        self.run_from = -math.inf  # when the run of refusals that goes on now began (its first arrival)
        self.meter_start = 0.0
        self.meter_ok = 0
        self.replies = 0  # replies with headers since the record was made
        self.share = 0.0  # refused share of the last ~SHARE_MEMORY replies (moving average)
        self.streak = 0  # refusals since the last reply that was not one
        self.served_since = 0  # replies since the last refusal
        self.ok_level = ok_level  # most requests in flight when an OK came back: a load the host takes
        self.acted_at = -1.0  # when a cap or pace was last set: older requests' replies are stale
        self.best_rate = best_rate  # highest accepted rate measured: the pace's floor is a share of it
        self.floor = 0.0  # the pace's floor when it was last set
        self.grown_at = 0.0  # when the pace last grew (or was judged)
        self.seeking = False  # paced, the rate unknown: a refusal at our pace says it is too fast
        # The reveal (docs/paarc.md, "A host that refuses its cold start"): the pace ramps up from
        # what the host served per Retry-After, and the refusal that ends the ramp tells its rate.
        self.ramping = False
        self.burst = 0  # OK replies to what was sent before the refusal: the bucket's size, if it is one
        self.reveal_s = 0.0  # the Retry-After of the opening refusal
        self.reveal_wait = 0.0  # a first refusal from cold named this wait: a second of its burst starts the reveal
        self.refused_from = math.inf  # when the request that first refusal answered was sent
        self.served_after = 0  # OKs to requests of that burst sent after it: a drained host gives few
        self.ramp_from = 0.0  # requests per second at the ramp's start
        self.ramp_start = math.inf  # when the ramp began (the hold's end)
        self.ramp_ok = 0  # OK replies on the ramp: the sends it made (until the bucket runs dry, all taken)
        self.ramp_read = False  # rate_cap was read from the ramp's end, not from the meter
        self.tail = False  # the host's last rows: the pace stays at or under the measured rate

    def reply(self, refused: bool, retried: bool = False) -> None:
        self.replies += 1
        self.share += (float(refused) - self.share) / SHARE_MEMORY
        # A refused retry neither makes nor breaks a streak: retries wait out the hold together and
        # go first after it, and a URL that failed may well fail again.
        if not (refused and retried):
            self.streak = self.streak + 1 if refused else 0
        self.served_since = 0 if refused else self.served_since + 1

    def refused(self, now: float, retried: bool = False, run_gap: float = 0.0) -> None:
        """Count a 429/503. One that comes within `run_gap` of the one before continues its run."""
        self.reply(refused=True, retried=retried)
        if now - self.refused_at > run_gap:
            self.run_from = now
        self.refused_at = now
        if self.rate_cap > 0:
            if self.creep > CREEP_MIN:
                # Crept past the rate, or the rate was measured high (a refilled burst counts in it):
                # give a little back, and start the next climb slowly.
                self.creep = max(CREEP_MIN, self.creep / CREEP_GIVEBACK)
            elif self.ramp_read:
                # Refused still, all of that given back: the ramp's reading was far too high (a reveal
                # whose sends fell behind its ramp read a 150/s bucket as 192/s, and the host refused
                # one request in thirty for good). What the host delivered lately is its rate.
                accepted = self.accepted_rate(now)
                if accepted is not None and accepted < CREEP_MIN * self.rate_cap:
                    self.rate_cap, self.creep, self.ramp_read = accepted, 1.0, False
            # Never under the pace's floor: a rate measured while we barely sent can be far under
            # what the host serves.
            self.pace = min(self.pace, max(self.ceiling(), self.floor))

    def sent_before_run(self, sent: float | None) -> bool:
        """Whether a refused request went out before its run's first refusal came back: one of a
        burst the host took fewer of. One sent later was a refused request's replacement (a storm:
        one slot refused over and over), and tells nothing new about the cap."""
        return sent is None or sent < self.run_from

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
        if self.ramping:
            self.ramp_ok += 1
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

    def reveal(self, retry_after: float, served: int) -> None:
        """The host refused within its first round trips and named a wait: a cap or a token bucket,
        which only a refusal tells apart. Resume at a rate it surely takes (what it served from cold,
        `served` so far and the rest of that burst's OKs (count_burst), per wait) and
        double it every RAMP_DOUBLING_S: a cap soon binds instead (the ramp ends), a bucket refuses
        within a few doublings, and when it does, `ramp_rate` reads its rate from the ramp."""
        self.ramping = self.seeking = True
        self.reveal_s = max(retry_after, MIN_INTERVAL_S)
        self._start_from(served)

    def refusals_were_the_host(self) -> bool:
        """Whether the cold start's refusals can be the host's: a cap or a bucket, once full,
        refuses what comes after as well, where refusals of single URLs come among OKs."""
        return self.served_after <= REFILL_SLACK

    def count_served_after(self, sent: float) -> bool:
        """An OK to a request of the cold start's burst (sent before we acted on its refusal).
        True when that makes the refusals about their URLs: the reveal, if begun, is called off."""
        if not (self.reveal_wait and self.refused_from + BURST_SPREAD_S < sent <= self.acted_at):
            return False
        self.served_after += 1
        if self.refusals_were_the_host():
            return False
        self.reveal_wait = 0.0
        if self.ramping and self.before_ramp():
            self.ramping = self.seeking = False
            self.pace = self.ramp_from = 0.0
        return True

    def before_ramp(self) -> bool:
        """The reveal's hold is still on: OKs to the cold start's burst are still coming in."""
        return math.isinf(self.ramp_start)

    def count_burst(self) -> None:
        """An OK reply to a request sent before the refusal that started the reveal."""
        self._start_from(self.burst + 1)

    def _start_from(self, burst: int) -> None:
        self.burst = burst
        self.ramp_from = self.pace = max(burst, RAMP_MIN_BURST) / self.reveal_s

    def _ramp_at(self, t: float) -> float:
        """The ramp's pace at time t (the ramp started)."""
        return self.ramp_from * 2.0 ** (max(t - self.ramp_start, 0.0) / RAMP_DOUBLING_S)

    def ramp_pace(self, now: float, hold_until: float) -> float:
        """The ramp's pace at `now` (continuous, so the refusal that ends it can be read back)."""
        if now < hold_until:
            return self.pace
        if self.before_ramp():
            self.ramp_start = hold_until
        self.pace = self._ramp_at(now)
        return self.pace

    def _pace_sent(self, at: float, sends: int) -> float:
        """The ramp's pace at `at` where its sends really were: no more than the pace after `sends`
        of them (the integral of the pace from its start counts them), which a late loop makes
        fewer than its clock says."""
        return min(self._ramp_at(at), self.ramp_from + sends * math.log(2.0) / RAMP_DOUBLING_S)

    def ramp_gap(self, now: float, hold_until: float) -> float:
        """Seconds to the next send on the ramp: the pace integrated from now to then makes one
        request (1 / pace would leave the first gaps of a slow start seconds long)."""
        pace = self.ramp_pace(now, hold_until)
        return RAMP_DOUBLING_S * math.log2(1.0 + math.log(2.0) / (RAMP_DOUBLING_S * pace))

    def ramp_rate(self, sent: float, sent_before: int) -> float:
        """The rate of a token bucket that refused a request sent at `sent` during the ramp.

        Full after the hold, the bucket holds `burst` requests; it empties once the doubling pace
        p(t) passes its rate r, at time t_r, and refuses when what the pace sent past r adds up to
        the burst (less half a request): the integral of p - r from t_r to `sent` equals it. With
        p(sent) = x * r that reads p(sent) * tau * (x - 1 - ln x) = burst * ln2 * x (tau: the
        doubling time), whose root x > 1 gives r = p(sent) / x (clamped to the ramp's start).
        The cold start served the bucket and its refill meanwhile (11 to 14 from a bucket of 10, as
        our loop was late): the reading errs low, which the creep makes up.

        p(sent) is the ramp's pace where the sends really were: `sent_before` of them, which a late
        loop makes fewer than the ramp's integral to `sent` (read from the clock instead, one run in
        six took the bucket for 122/s instead of 100/s, and was refused for seconds).
        """
        p_sent = self._pace_sent(sent, sent_before)
        # A bucket refuses once less than a whole token is left: about half a send before it is empty.
        return max(self.ramp_from, p_sent / _overshoot(p_sent, max(self.burst, RAMP_MIN_BURST) - 0.5))

    def reread(self, rate: float) -> None:
        """The ramp's reading of the rate, read again from every reply (bucketfit.py) before any
        request went out at it."""
        if rate != self.rate_cap:
            self.rate_cap, self.creep = rate, 1.0
            self.pace = max(self.floor, PACE_CAP_MARGIN * rate)

    def end_ramp(self) -> None:
        self.ramping = False
        self.ramp_start = math.inf

    def speaks_for_host(self, sent: float | None) -> bool:
        """After `refused()`: whether this refusal, outside a backoff's burst, is about the host.

        A guessed pace refused at that pace was too fast; a run of fresh refusals counts before a
        share can be told; after that only a share clearly above the bar does (docs/paarc.md).
        """
        if self.seeking and sent is not None and sent >= self.acted_at:
            return True
        fresh = sent is None or sent >= self.acted_at
        if self.replies < PUSHBACK_MIN_REPLIES and self.streak >= PUSHBACK_STREAK and fresh:
            return True
        return self.replies >= PUSHBACK_MIN_REPLIES and self.refused_share_low() >= PUSHBACK_SHARE

    def lesson_length(self, memory_s: float, period: float, prior_cap: int, inflight: int,
                      accepted: float | None) -> float:
        """How long to keep a lesson learned afresh: twice the last time (up to MEMORY_MAX_PERIODS
        periods) when the host refused again where it did before, else one period."""
        same_cap = prior_cap > 0 and inflight <= RECALL_SLACK * prior_cap
        same_rate = accepted is None or self.rate_cap <= 0 or accepted <= RECALL_SLACK * self.rate_cap
        if same_cap and same_rate:
            return min(2.0 * memory_s, MEMORY_MAX_PERIODS * period)
        return period

    def set_pace(self, now: float, accepted: float | None, ok_total: int, age: float, send_rate: float) -> None:
        """The host limits by rate: pace under the rate it accepted, or, unmeasured, guess between
        what it refused and what it delivered (`send_rate`: what the limit allows, the last resort)."""
        delivered = max(self.best_rate, ok_total / max(age, METER_MIN_S * 2))
        ramped = self.ramping
        self.end_ramp()
        if accepted is not None:
            self.rate_cap, self.creep, self.ramp_read = accepted, 1.0, ramped
            new_pace = PACE_MARGIN * accepted if not ramped else PACE_CAP_MARGIN * accepted
        else:
            # Cut from what the host just took, not from what the limit would allow.
            recent = self.recent_rate(now)
            if recent is None:
                recent = send_rate
            upper = min(self.pace or math.inf, recent)
            new_pace = PACE_CUT * upper
            if 0 < delivered < new_pace:
                new_pace = min(new_pace, math.sqrt(upper * delivered))  # the geometric middle
        self.floor = PACE_FLOOR * delivered if delivered > 0 else PACE_FLOOR_UNSERVED
        new_pace = max(new_pace, self.floor)
        # A first pace, set without a measured rate, is a guess: one refusal at it may cut it again.
        self.seeking = self.pace <= 0 and accepted is None
        self.pace = new_pace if self.pace <= 0 else min(self.pace, new_pace)

    def rows_left(self, left: int, now: float) -> None:
        """The manifest is read and `left` of the host's rows remain. Within the last TAIL_S seconds
        of them at the pace, the pace stops growing and comes down to the rate the host accepts: a
        refusal there makes its row wait out a Retry-After with nothing else left to send, which
        ended the polite bench's 100/s bucket up to a second late (its creep refused it 7-10 times
        in the run's last three seconds). Creeping on could only gain a share of those seconds.

        That rate is the higher of the reading and what the meter saw accepted lately: a creep past
        the rate is refused down to it, a quiet one is all accepted. The reading alone can be seconds
        stale and low (a ramp's cold start read the bench's 100/s bucket as 86/s, crept to 100/s
        since): paced at it, that bucket's last 2 s of rows ended 0.3 s late."""
        if self.tail or left > self.pace * TAIL_S:
            return
        self.tail = True
        if self.rate_cap > 0:
            accepted = self.accepted_rate(now) or 0.0
            self.pace = min(self.pace, max(self.rate_cap, self.floor, accepted))

    def grow_pace(self, now: float, hold_until: float, send_rate: float) -> bool:
        """A quiet interval or PACE_STEP_S: offer a little more, up to the ceiling, which creeps up
        while the host stays quiet. True when the record is spent (memory expired, pace dropped)."""
        self.grown_at = now
        if self.ramping:
            # The concurrency limit binds first: a cap, not a rate. Judged by the sends the ramp
            # made, not by its clock: on a busy loop (many_hosts: 100 hosts starting at once) a
            # 10/s bucket's ramp made 5 sends in 0.5 s while its clock's pace passed 1.5x what two
            # in flight allow; taken for a cap and left unpaced, it refused every other request.
            self.ramp_pace(now, hold_until)  # the ramp's clock starts at the hold's end
            if self._pace_sent(now, self.ramp_ok) > PACE_DROP * send_rate:
                self.end_ramp()
                self.seeking = False
                self.pace = 0.0
            return False
        if self.pace > 0 and now >= hold_until and not self.tail:
            ceiling = float("inf")
            if self.rate_cap > 0:
                # A measured rate is never forgotten, only crept past.
                ceiling = self.ceiling()
                quiet = now - self.refused_at
                if self.pace >= ceiling and quiet >= CREEP_QUIET_S and self.served_since >= CREEP_QUIET_REPLIES:
                    doublings = min(int(quiet / CREEP_QUIET_S) - 1, CREEP_MAX_DOUBLINGS)
                    step = min(CREEP_STEP ** (2**doublings), PACE_GAIN)
                    self.creep *= step
                    ceiling *= step
            gain = PACE_GAIN if self.rate_cap > 0 else PACE_SEEK_GAIN
            self.pace = min(self.pace * gain, max(self.pace, ceiling))  # the ceiling stops growth
            if now >= self.until and self.pace > PACE_DROP * send_rate:
                self.pace = 0.0
        return self.pace <= 0 and now >= self.until


def _overshoot(p_sent: float, bucket: float) -> float:
    """The root x > 1 of p * tau * (x - 1 - ln x) = bucket * ln2 * x (Pushback.ramp_rate), by bisection:
    the left side minus the right is negative just past 1 and grows past its root."""
    def short(x: float) -> bool:  # the left side is still under the right at x
        return p_sent * RAMP_DOUBLING_S * (x - 1.0 - math.log(x)) < bucket * math.log(2.0) * x

    lo, hi = 1.0, 2.0
    while short(hi) and hi < 1e6:
        hi *= 2.0
    for _ in range(40):
        mid = (lo + hi) / 2.0
        if short(mid):
            lo = mid
        else:
            hi = mid
    return hi

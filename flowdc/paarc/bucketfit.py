"""The token buckets that explain a host's replies: the rates a bucket could have and still have
answered every request as it did.

A token bucket of `burst` tokens refilled at `rate` per second answers a request OK while it holds
a whole token. Equivalently (the generic cell rate algorithm), it keeps a theoretical arrival time
that each accepted request pushes 1/rate on, and accepts a request unless that time runs more than
(burst - 1)/rate ahead of the request's arrival. Given the arrivals and which were accepted, the
theoretical time follows from the rate alone, so each reply bounds the burst for a candidate rate:
an OK from below, a refusal from above. The rates for which some whole burst meets (nearly) every
bound are the ones the replies allow.

Pure: no clock, no I/O. The controller hands over (sent, answered, ok) of a host's cold start and
its reveal's ramp (docs/paarc.md, "A host that refuses its cold start").
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

GRID_STEP = 1.02  # candidate rates 2% apart: finer than the pace's own margins
GRID_SPAN = 4.0  # candidates from a quarter to four times the reading to check
MIN_EVENTS = 8  # fewer replies bound nothing worth the name
MAX_MISFITS_SHARE = 0.05  # a fit that leaves more replies unexplained is no token bucket
HOST_TIME_SPREAD = 0.25  # a host's own time for a reply varies this much over its least


@dataclass(frozen=True, slots=True)
class BucketFit:
    low: float  # the least and most rate (per second) that explain the replies...
    high: float
    misfits: int  # ... each leaving this many of them unexplained (timing noise at the bucket's edge)

    def clamp(self, rate: float) -> float:
        return min(max(rate, self.low), self.high)


def arrivals(replies: Sequence[tuple[float, float, bool]]) -> list[tuple[float, bool]]:
    """(arrival at the host, ok) of each (sent, answered, ok), in arrival order.

    Our send times lead the arrivals by what our side adds (a connect, a late loop: 20-30 ms in the
    cold start of the polite bench, against 1 ms on a pooled connection). A reply about as fast as
    the host's fastest of its kind (a refusal comes back at once, an OK after the host's work)
    arrived when it was sent; a slower one is timed back from its answer by that fastest time.
    Ties: the OK first, as a bucket takes the first of simultaneous requests."""
    least: dict[bool, float] = {}
    for sent, answered, ok in replies:
        least[ok] = min(least.get(ok, math.inf), answered - sent)
    out = []
    for sent, answered, ok in replies:
        fast = answered - sent <= (1.0 + HOST_TIME_SPREAD) * least[ok]
        out.append((sent if fast else answered - least[ok], ok))
    out.sort(key=lambda e: (e[0], not e[1]))
    return out


def fit_bucket(replies: Sequence[tuple[float, float, bool]], around: float) -> BucketFit | None:
    """The range of bucket rates within GRID_SPAN of `around` that explain the replies with the
    fewest misfits; None when there are too few replies, no refusal among them, or no rate explains
    them well enough (not a token bucket, or timing too noisy to say)."""
    events = arrivals(replies)
    if len(events) < MIN_EVENTS or all(ok for _, ok in events) or around <= 0:
        return None
    best, rates = math.inf, []
    # Powers of GRID_STEP: the same candidates whatever the reading, so a reading the replies allow stands.
    first = math.ceil(math.log(around / GRID_SPAN, GRID_STEP))
    last = math.floor(math.log(around * GRID_SPAN, GRID_STEP))
    for k in range(first, last + 1):
        rate = GRID_STEP**k
        misfits = _misfits(events, rate)
        if misfits < best:
            best, rates = misfits, [rate]
        elif misfits == best:
            rates.append(rate)
    if math.isinf(best) or (best > MAX_MISFITS_SHARE * len(events) and best > 1):
        return None
    return BucketFit(rates[0], rates[-1], int(best))


def _misfits(events: Sequence[tuple[float, bool]], rate: float) -> float:
    """The fewest replies a bucket refilled at `rate` fails to explain, over every whole burst. The
    last refusal (the ramp's, the one the reading is about) must be explained: inf when it cannot."""
    step = 1.0 / rate
    due = -math.inf  # the theoretical arrival time
    need: list[float] = []  # an OK needs burst >= this...
    refuse: list[float] = []  # ... a refusal needs burst < this
    last_refusal = math.inf
    for at, ok in events:
        lead = rate * (due - at) if due > at else 0.0
        if ok:
            need.append(lead + 1.0)
            due = max(due, at) + step
        else:
            refuse.append(lead + 1.0)
            last_refusal = lead + 1.0
    need.sort()
    refuse.sort()
    fewest = math.inf
    for burst in {1, *(math.ceil(x - 1e-9) for x in need)}:
        if burst >= last_refusal:
            continue
        unmet = len(need) - bisect.bisect_right(need, burst + 1e-9)  # OKs this burst could not give
        wrong = bisect.bisect_right(refuse, burst)  # refusals this burst would not make
        fewest = min(fewest, unmet + wrong)
    return fewest


MAX_REVEAL_REPLIES = 128  # a cold start and ramp longer than this is no small bucket's: no fit


class RevealLog:
    """The replies of a host's cold start and of its reveal's ramp, kept to read a token bucket's
    rate once the ramp's refusal and the requests sent before it have all answered."""

    __slots__ = ("reading", "replies", "until_sent")

    def __init__(self) -> None:
        self.replies: list[tuple[float, float, bool]] = []  # (sent, answered, accepted by the host)
        self.until_sent: float | None = None  # the ramp's refusal was sent then: a reread is due
        self.reading = 0.0  # what the ramp's model read

    def note(self, sent: float, answered: float, accepted: bool) -> bool:
        """Keep one reply; False once there are too many to be a cold start's."""
        if len(self.replies) >= MAX_REVEAL_REPLIES:
            return False
        self.replies.append((sent, answered, accepted))
        return True

    def await_rest(self, sent: float, reading: float) -> None:
        self.until_sent, self.reading = sent, reading

    @property
    def due(self) -> bool:
        return self.until_sent is not None

    def reread(self) -> float:
        """The ramp's reading, moved into the range of rates every reply allows (unchanged when the
        replies fit no token bucket well)."""
        assert self.until_sent is not None
        bound = self.until_sent + 1e-9
        fit = fit_bucket([r for r in self.replies if r[0] <= bound], self.reading)
        return self.reading if fit is None else fit.clamp(self.reading)

"""The PAARC controller on hand-made sample streams: signals, bounds, params, snapshot, memory.

The host-like behaviour (convergence, capacity changes, Retry-After seen from the host) is in
test_paarc_sim.py. Here samples are fed directly, so each test isolates one rule.
"""

from __future__ import annotations

import gc
import json
import random
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowdc.config import PaarcOptions
from flowdc.paarc import (
    BACKOFF,
    LAT_BUF_CAP,
    PROBE_BW,
    ClientLoad,
    FixedLimit,
    HostLimit,
    PaarcController,
    PaarcParams,
    Pushback,
    controller,
    make_host_limit,
    policy_factory,
)
from flowdc.paarc.pushback import TAIL_S
from flowdc.paarc.window import Window
from flowdc.signals import Sample, Signal

TTFB = 0.05  # a host with constant latency never looks inflated, so STARTUP climbs to C_max
SMALL = PaarcParams(C_init=8, C_max=64)
SPAN = 0.25  # one feeder interval; the controller's own intervals are 4 x RTprop = 0.2 s here

Pattern = Callable[[int], Signal]  # index of the reply within a feeder interval -> its signal


def ok(_: int) -> Signal:
    return Signal.OK


def every(n: int, signal: Signal) -> Pattern:
    return lambda i: signal if i % n == 0 else Signal.OK


@dataclass
class Feeder:
    """A closed-loop host with a fixed latency: `limit` requests in flight, each taking `ttfb`.

    So replies arrive at limit / ttfb per second (Little's law), evenly spaced, for SPAN seconds.
    """

    ctl: PaarcController
    now: float = 0.0

    def interval(self, pattern: Pattern = ok, ttfb: float = TTFB) -> None:
        n = max(8, round(self.ctl.limit() * SPAN / ttfb))
        for i in range(n):
            self.now += SPAN / n
            sig = pattern(i)
            self.ctl.on_sample(self.now, Sample(sig, None if sig is Signal.TIMEOUT else ttfb, self.ctl.limit()))
        self.ctl.tick(self.now)

    def intervals(self, n: int, pattern: Pattern = ok, ttfb: float = TTFB) -> list[int]:
        limits = []
        for _ in range(n):
            self.interval(pattern, ttfb)
            limits.append(self.ctl.limit())
        return limits


def steady(params: PaarcParams = SMALL) -> Feeder:
    """A controller that has climbed to C_max on a healthy host and cruises there."""
    f = Feeder(PaarcController(params, 0.0))
    f.intervals(12)
    assert f.ctl.limit() == params.C_max
    assert f.ctl.snapshot()["state"] == PROBE_BW
    return f


# -- params and factory -----------------------------------------------------------------------------
def test_params_defaults_match_readme() -> None:
    p = PaarcParams()
    assert (p.C_init, p.C_min, p.C_max, p.mu, p.beta) == (8, 2, 2000, 1.0, 0.7)
    assert (p.theta_50, p.theta_95, p.probe_rtt_period, p.alpha_ema) == (1.5, 2.0, 30.0, 0.3)
    assert PaarcParams.from_options(PaarcOptions()) == p


def test_params_from_any_object_with_the_names() -> None:
    opts = SimpleNamespace(C_init=4, C_min=1, C_max=50, mu=0.9, beta=0.5, theta_50=1.4,
                           theta_95=1.8, probe_rtt_period=10.0, alpha_ema=0.5)
    p = PaarcParams.from_options(opts)
    assert (p.C_init, p.C_max, p.mu, p.probe_rtt_period) == (4, 50, 0.9, 10.0)
    assert PaarcParams.from_options(opts) is p  # interned: a million hosts share one params object


@pytest.mark.parametrize("bad", [dict(C_min=10, C_init=8), dict(C_max=4), dict(mu=0.0), dict(beta=1.0),
                                 dict(theta_50=1.0), dict(probe_rtt_period=0.0), dict(alpha_ema=0.0)])
def test_params_reject_nonsense(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        PaarcParams(**bad)  # type: ignore[arg-type]


def test_make_host_limit_picks_the_policy() -> None:
    on = make_host_limit(PaarcOptions(), "h", 5.0)
    off = make_host_limit(PaarcOptions(enable_paarc=False, C_init=12), "h", 5.0)
    assert isinstance(on, PaarcController) and on.limit() == 8
    assert isinstance(off, FixedLimit) and off.limit() == 12
    policy: HostLimit = on  # the protocol is satisfied statically too
    assert policy.hold_until() <= 5.0


def test_a_budget_share_gives_a_quarter_of_c_init_and_c_max() -> None:
    """A host split over partitions that run at once: a quarter of its budget is a quarter of C_init
    and of C_max, and STARTUP climbs to that C_max and no further."""
    ctl = make_host_limit(PaarcOptions(), "h", 0.0, share=0.25)
    assert isinstance(ctl, PaarcController)
    assert (ctl.limit(), ctl.p.C_min, ctl.p.C_max) == (2, 2, 500)
    limits = Feeder(ctl).intervals(14)
    assert max(limits) == limits[-1] == 500


def test_a_budget_share_never_goes_under_c_min() -> None:
    opts = PaarcOptions(C_min=3)
    tiny = make_host_limit(opts, "h", 0.0, share=0.001)
    assert isinstance(tiny, PaarcController)
    assert (tiny.limit(), tiny.p.C_init, tiny.p.C_max) == (3, 3, 3)
    tiny.on_sample(0.01, Sample(Signal.OVERLOAD, 0.001, 3, 1.0))  # a cut stays at C_min too
    assert tiny.limit() == 3
    assert make_host_limit(PaarcOptions(enable_paarc=False, C_init=12), "h", 0.0, share=0.25).limit() == 3
    assert make_host_limit(PaarcOptions(enable_paarc=False, C_init=12), "h", 0.0, share=0.01).limit() == 2
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="share"):
            make_host_limit(opts, "h", 0.0, share=bad)


def test_the_policy_factory_gives_each_host_its_share() -> None:
    make_policy = policy_factory(PaarcOptions(), budget={"a.example": 0.25})
    shared, whole = make_policy("a.example", 0.0), make_policy("b.example", 0.0)
    assert isinstance(shared, PaarcController) and isinstance(whole, PaarcController)
    assert (shared.p.C_max, whole.p.C_max) == (500, 2000)
    assert shared.p is make_policy("a.example", 1.0).p  # interned like any params
    # A name without a port stands for every port of it (it matched none: the host got its whole budget).
    by_name = policy_factory(PaarcOptions(), budget={"127.0.0.2": 0.25, "[::1]": 0.5, "b.example:8443": 0.5})
    assert [by_name(host, 0.0).p.C_max for host in ("127.0.0.2:8080", "[::1]:8080", "b.example:8443", "b.example:9")] \
        == [500, 1000, 1000, 2000]


def test_partitions_of_a_rate_limited_host_are_paced_to_its_rate_together() -> None:
    """Four partitions of a host that allows 100/s, each with a quarter share, all at once: each
    learns its pace from the refusals of its own requests, so together they stay near the host's
    rate with few refusals. (Scaling a learned pace by the share again would count the share twice.)"""
    ctls = [make_host_limit(PaarcOptions(C_init=4, C_min=2, C_max=64), "h", 0.0, share=0.25) for _ in range(4)]
    due, tokens, stamp = [0.0] * 4, 5.0, 0.0
    ok = refused = 0
    while min(due) < 60.0:
        i = min(range(4), key=due.__getitem__)
        ctl, now = ctls[i], due[i]
        tokens = min(5.0, tokens + (now - stamp) * 100.0)
        stamp = now
        accepted = tokens >= 1.0
        tokens -= 1.0 if accepted else 0.0
        ctl.on_sample(now + 0.001, Sample(Signal.OK if accepted else Signal.OVERLOAD, 0.001, ctl.limit(),
                                          None if accepted else 1.0))
        ctl.tick(now + 0.001)
        if now > 30.0:
            ok, refused = ok + accepted, refused + (not accepted)
        due[i] = max(now + 0.001 / ctl.limit(), now + ctl.min_gap(), ctl.hold_until())
    assert all(ctl.min_gap() > 0 for ctl in ctls)  # every partition is paced
    assert 90 <= ok / 30.0 <= 101, ok / 30.0  # the host's rate, shared
    assert refused < 0.05 * ok


# -- host signals ---------------------------------------------------------------------------------------
def test_startup_climbs_to_c_max_on_a_host_that_never_slows() -> None:
    f = Feeder(PaarcController(SMALL, 0.0))
    limits = f.intervals(12)
    assert limits[:4] == [16, 32, 64, 64]  # INIT measures, then x2 per interval
    assert max(limits) == SMALL.C_max


def test_one_refused_url_in_a_cold_start_is_no_reveal() -> None:
    """A host that refuses its cold start's burst (two or more of it) is resumed on a paced ramp
    (the reveal, docs/paarc.md). One URL refused among OKs is no such thing: a faults bench host
    whose first reply was a scripted 429 was paced from 4 requests/s and took 4x as long."""
    def cold_start(refused: int) -> PaarcController:
        ctl = PaarcController(PaarcParams.defaults(), 0.0)
        for i in range(refused):  # refused in a millisecond, before any OK came back
            ctl.on_sample(0.001 + i * 1e-4, Sample(Signal.OVERLOAD, 0.001, 8 - i, 2.0))
        for i in range(8 - refused):
            ctl.on_sample(0.01 + i * 1e-4, Sample(Signal.OK, 0.01, 8 - refused - i))
        ctl.tick(2.5)
        return ctl

    assert cold_start(1).min_gap() == 0  # the URL is retried after its wait; the host is not paced
    burst = cold_start(3)
    assert burst.push is not None and burst.push.ramping and burst.min_gap() > 0
    # Once the ramp runs, a reply to an older request is no longer part of the cold start's burst
    # (a cap lesson on the ramp moves acted_at past requests still out).
    served = burst.push.burst
    burst.min_gap(3.0)  # the hold is over: the ramp starts
    burst.push.acted_at = 3.2
    burst.on_sample(3.25, Sample(Signal.OK, 0.1, 2))
    assert burst.push.burst == served


@pytest.mark.parametrize("later_ones_served", [True, False])
def test_refused_urls_among_later_oks_are_no_reveal(later_ones_served: bool) -> None:
    """Two refusals in a cold start start the reveal only if the host refused what was sent after
    them as well, as a full cap or an empty bucket does (a token or two refilled aside). A faults
    bench host whose first burst held two scripted 429s among OKs sent later was paced from 5/s, cut
    to 3/s by a third on the ramp, and took 16-17 s where its rows take 7 (2 runs in 36)."""
    ctl = PaarcController(PaarcParams.defaults(), 0.0)
    for i in range(4):  # the burst's first OKs
        ctl.on_sample(0.012 + i * 1e-3, Sample(Signal.OK, 0.011, 8 - i))
    ctl.on_sample(0.030, Sample(Signal.OVERLOAD, 0.029, 8, 2.0))  # sent at 0.001, a far host
    # Sent after it, answered after it: by a drained host refused, by one that refused a URL served.
    later, wait = (Signal.OK, None) if later_ones_served else (Signal.OVERLOAD, 2.0)
    for i, sent in enumerate((0.010, 0.012, 0.014)):
        ctl.on_sample(0.040 + i * 1e-3, Sample(later, 0.040 + i * 1e-3 - sent, 7 - i, wait))
    ctl.on_sample(0.050, Sample(Signal.OVERLOAD, 0.045, 4, 2.0))  # the burst's second refusal (sent at 0.005)
    assert ctl.push is not None and ctl.push.ramping is not later_ones_served
    ctl.tick(2.5)  # the hold is over
    assert (ctl.min_gap(2.5) == 0) is later_ones_served  # refused URLs: not paced; a drained host: the ramp


def test_the_ramp_reads_a_bucket_from_the_sends_it_made_not_from_the_clock() -> None:
    """The ramp's reading of a bucket (Pushback.ramp_rate) assumes the sends kept to the ramp. A
    late loop sends fewer; read from the clock, one polite bench run in six took a 100/s bucket for
    122/s and was refused for seconds. With the sends counted, a late ramp reads lower, never higher."""
    push = Pushback()
    push.reveal(1.0, 11)  # a bucket of 10 at 100/s serves 11 from cold, and the ramp starts at 11/s
    push.ramp_start = 0.0
    assert 85 <= push.ramp_rate(0.457, sent_before=36) <= 100  # refused as the bench's bucket was, on time
    assert push.ramp_rate(0.48, sent_before=36) <= 100  # the same sends, refused late on the clock
    assert push.ramp_rate(0.48, sent_before=10_000) > 115  # ... which read from the clock was 122/s


def test_a_ramp_is_taken_for_a_cap_by_the_sends_it_made_not_by_its_clock() -> None:
    """The reveal's ramp ends unrefused, as a cap, once its pace passes what the concurrency limit
    allows. On a busy loop (many_hosts: 100 hosts at once) a 10/s bucket's ramp made 5 sends in
    0.5 s while its clock's pace passed 1.5x what 2 in flight allow at 22 ms: taken for a cap and
    left unpaced, the host refused every other request. The sends' own pace decides."""
    def ramp(sends: int) -> Pushback:
        push = Pushback()
        push.reveal(1.0, 2)  # a bucket of 2 served 2 from cold: the ramp starts at 2/s
        push.grow_pace(1.0, 1.0, send_rate=91.0)  # the hold is over: the ramp starts
        for i in range(sends):
            push.count_ok(1.05 + i * 0.02)
        push.grow_pace(1.7, 1.0, send_rate=91.0)  # the clock's pace: 2 x 2^7 = 256/s
        return push

    assert ramp(sends=5).ramping  # 5 sends: a pace of 37/s at most, a bucket may yet refuse
    capped = ramp(sends=20)  # the limit's pace: a cap binds
    assert not capped.ramping and capped.pace == 0


def test_a_burst_of_429s_cuts_once_and_stays_under_what_the_host_took() -> None:
    f = steady()
    sent = f.now + 0.01
    for i in range(30):  # one burst: 30 of the 64 in flight refused, all sent before the first reply
        f.ctl.on_sample(sent + 0.002 + i * 1e-4, Sample(Signal.OVERLOAD, 0.002 + i * 1e-4, 64))
    assert f.ctl.limit() == min(int(64 * 0.7), 64 - 30)
    assert f.ctl.snapshot()["state"] == BACKOFF
    assert f.ctl.snapshot()["n_429_503"] == 30


def test_refusals_after_the_cut_cut_again_only_as_a_real_share() -> None:
    f = steady()
    f.ctl.on_sample(f.now + 0.01, Sample(Signal.OVERLOAD, 0.002, 64))  # a host's first refusal counts
    cut = f.ctl.limit()
    assert cut == int(64 * 0.7)
    # Then one reply in ten refused, sent after the cut: per-URL refusals, not our load.
    limits = f.intervals(30, every(10, Signal.OVERLOAD))
    assert min(limits) >= cut
    assert f.ctl.min_gap() == 0
    # Half refused is the host telling us to slow down.
    f.intervals(2, every(2, Signal.OVERLOAD))
    assert f.ctl.limit() < cut


def test_backoff_ends_after_the_cooldown_and_growth_resumes() -> None:
    f = steady()
    f.ctl.on_sample(f.now + 0.01, Sample(Signal.OVERLOAD, 0.002, 64))
    f.now += 0.5  # cooldown is 5 x RTprop = 0.25 s here
    f.ctl.tick(f.now)
    assert f.ctl.snapshot()["state"] == PROBE_BW
    limits = f.intervals(40)
    # Up-probes find the room again, but stay under the level that drew the 429 while it is
    # remembered (probe_rtt_period): each overshoot would cost the host a hold.
    assert limits[-1] == 63
    assert max(limits) <= 63
    f.now += SMALL.probe_rtt_period
    assert f.intervals(40)[-1] == SMALL.C_max  # forgotten: the host may be probed past it again


def run_token_bucket(ctl: PaarcController, rate_at: Callable[[float], float], until: float,
                     on_send: Callable[[float, bool], None]) -> None:
    """A host counting requests per second (a token bucket of 5, 1 ms replies, Retry-After: 1);
    the client honours limit(), hold_until() and min_gap()."""
    tokens, stamp, now = 5.0, 0.0, 0.0
    while now < until:
        now = max(now + 1.0 / (ctl.limit() / 0.001), now + ctl.min_gap(), ctl.hold_until())
        tokens = min(5.0, tokens + (now - stamp) * rate_at(now))
        stamp = now
        accepted = tokens >= 1.0
        tokens -= 1.0 if accepted else 0.0
        signal = Signal.OK if accepted else Signal.OVERLOAD
        ctl.on_sample(now + 0.001, Sample(signal, 0.001, ctl.limit(), None if accepted else 1.0))
        ctl.tick(now + 0.001)
        on_send(now, accepted)


def test_a_host_limiting_by_rate_gets_paced() -> None:
    """A host that counts requests per second (a 100/s token bucket) refuses the excess whatever
    the concurrency: the controller paces sends under the rate it accepted, and the refusals stop."""
    ctl = PaarcController(PaarcParams(C_init=4, C_min=2, C_max=64), 0.0)
    late: list[bool] = []
    run_token_bucket(ctl, lambda now: 100.0, 20.0, lambda now, ok: late.append(ok) if now > 10.0 else None)
    gap = ctl.min_gap()
    assert gap > 0, "a rate-limited host must be paced"
    # Near the rate: a quiet ceiling creeps up until refusals push it back, a few percent at most.
    assert 85 <= 1 / gap <= 103, 1 / gap
    assert late.count(False) / len(late) < 0.01  # refusals all but stopped
    assert late.count(True) / 10.0 > 90  # and the host delivers nearly its whole rate
    assert ctl.snapshot()["pace_per_s"] == round(1 / gap, 2)


def test_a_learned_rate_is_not_probed_again_with_a_burst() -> None:
    """Past the pushback memory a paced host is not re-probed by lifting its ceiling (each burst
    past a token bucket costs a hold and a dozen 429s): the ceiling only creeps."""
    ctl = PaarcController(PaarcParams(C_init=4, C_min=2, C_max=64), 0.0)
    holds: list[float] = []

    def note(now: float, accepted: bool) -> None:
        if ctl.hold_until() > now and (not holds or holds[-1] != ctl.hold_until()):
            holds.append(ctl.hold_until())

    run_token_bucket(ctl, lambda now: 100.0, 100.0, note)
    assert holds and max(holds) < 15.0, holds  # the learning at the start, then none


def test_a_rate_limit_that_is_lifted_is_followed_up() -> None:
    """A host that allowed 100/s and then 400/s: the quiet ceiling creeps up ever faster."""
    ctl = PaarcController(PaarcParams(C_init=4, C_min=2, C_max=64), 0.0)
    late: list[bool] = []
    run_token_bucket(ctl, lambda now: 100.0 if now < 20.0 else 400.0, 45.0,
                     lambda now, ok: late.append(ok) if now > 40.0 else None)
    assert late.count(True) / 5.0 > 250, f"{late.count(True) / 5.0:.0f}/s"


@pytest.mark.parametrize(("refused_at", "paced"), [(11, False), (12, False), (5, True)])
def test_only_refusals_well_under_a_served_load_mean_a_rate_limit(refused_at: int, paced: bool) -> None:
    """A hard cap of 12 counts a request until its reply is fully out, so it may refuse while we
    count 11 in flight, one under the 12 it just served: that is still a cap, not a rate. A burst
    refused at 5 in flight after 12 were served is about the rate."""
    ctl = PaarcController(SMALL, 0.0)
    now = 0.0

    def feed(n: int, signal: Signal, inflight: int, retry_after: float | None = None) -> None:
        nonlocal now
        for _ in range(n):
            now += 0.004
            ctl.on_sample(now, Sample(signal, 0.04, inflight, retry_after))
            ctl.tick(now)

    feed(200, Signal.OK, 12)
    feed(1, Signal.OVERLOAD, 13, retry_after=1.0)  # the first refusal: a cap at 13
    now += 1.5
    feed(100, Signal.OK, 12)
    while ctl.snapshot()["state"] != BACKOFF:  # fast 429s until their share speaks for the host
        now += 0.001
        ctl.on_sample(now, Sample(Signal.OVERLOAD, 0.001, refused_at, 1.0))
        assert ctl.counters.overload < 40
    assert (ctl.min_gap() > 0) is paced


@pytest.mark.parametrize("inflated_in", ["cold_start", "refused_burst"])
def test_a_capped_host_is_not_paced_for_oks_counted_where_in_flight_read_high(inflated_in: str) -> None:
    """many_hosts' hard caps of 3 (100 ms) were paced as token buckets in a quarter of the runs and
    served two thirds of their rate for seconds. Their cold start answered OK while we counted 5-7
    in flight (the rest of the burst still waiting on its connects, our loop lagging), and the burst
    a probe drew refusals with answered OK at 5-6 too; a later refusal at 4 then read as "refused
    well under a load served". Neither count shows a load the host took."""
    ctl = PaarcController(PaarcParams.defaults(), 0.0)
    now = 0.0

    def feed(n: int, signal: Signal, inflight: int, ttfb: float = 0.1, retry_after: float | None = None) -> None:
        nonlocal now
        for _ in range(n):
            now += 0.01
            ctl.on_sample(now, Sample(signal, ttfb, inflight, retry_after))
            ctl.tick(now)

    if inflated_in == "cold_start":
        feed(3, Signal.OK, 6)  # INIT's count held requests still connecting
        feed(1, Signal.OVERLOAD, 5, ttfb=0.001, retry_after=1.0)
        now += 1.5
        feed(100, Signal.OK, 3)
    else:
        feed(200, Signal.OK, 3)
        feed(1, Signal.OVERLOAD, 5, ttfb=0.001, retry_after=1.0)  # a probe's burst drew a refusal...
        feed(2, Signal.OK, 6, ttfb=0.09)  # ... and its other requests answered OK, sent before the cut
        now += 1.5
        feed(100, Signal.OK, 3)
    while ctl.snapshot()["state"] != BACKOFF:  # refused one past the cap, until it speaks for the host
        now += 0.001
        ctl.on_sample(now, Sample(Signal.OVERLOAD, 0.001, 4, 1.0))
        assert ctl.counters.overload < 40
    assert ctl.min_gap() == 0  # a cap: held under it, not paced


@pytest.mark.parametrize("seed", range(4))
def test_refusals_of_some_urls_whatever_the_load_do_not_hold_the_host_down(seed: int) -> None:
    """A host that serves everything in 10 ms but refuses one request in twelve, at whatever rate
    and concurrency we send (429, some with Retry-After: 1, like the faults bench): those refusals
    are about URLs. After its first refusal the host must run near full speed again, neither paced
    down nor held at a cap, also after the pushback memory (probe_rtt_period) expired."""
    rng = random.Random(seed)
    ctl = PaarcController(PaarcParams(C_init=8, C_min=2, C_max=64), 0.0)
    now, late_ok = 0.0, 0
    while now < 40.0:
        now = max(now + 1.0 / (ctl.limit() / 0.01), now + ctl.min_gap(), ctl.hold_until())
        refused = rng.random() < 0.08
        retry_after = 1.0 if refused and rng.random() < 0.4 else None
        signal = Signal.OVERLOAD if refused else Signal.OK
        ctl.on_sample(now + 0.01, Sample(signal, 0.01, rng.randint(1, ctl.limit()), retry_after))
        ctl.tick(now + 0.01)
        late_ok += now > 35.0 and not refused
    assert late_ok / 5.0 > 8 / 0.01, f"{late_ok / 5.0:.0f} OK/s late in the run, limit {ctl.limit()}"


def test_a_host_with_room_is_not_paced() -> None:
    f = steady()
    f.ctl.on_sample(f.now + 0.01, Sample(Signal.OVERLOAD, 0.002, 64))
    f.now += 0.5
    f.intervals(20)
    assert f.ctl.min_gap() == 0.0


def test_retry_after_holds_the_host_to_the_second() -> None:
    ctl = PaarcController(SMALL, 0.0)
    ctl.on_sample(10.0, Sample(Signal.OVERLOAD, 0.01, 8, retry_after=3.0))
    assert ctl.hold_until() == 13.0
    ctl.on_sample(10.5, Sample(Signal.OVERLOAD, 0.01, 8, retry_after=1.0))
    assert ctl.hold_until() == 13.0  # a shorter, later Retry-After never shortens the hold
    ctl.tick(12.9)
    assert ctl.snapshot()["state"] == BACKOFF  # the cooldown lasts at least the Retry-After


@pytest.mark.parametrize("pooled", [True, False])
def test_connects_time_the_host_only_when_it_never_pools(pooled: bool) -> None:
    """Replies on fresh connections took a connect (and TLS handshake) longer. Once the host has
    answered on a pooled connection they are counted but not timed, so a burst of new connections
    does not read as a queue; a host that closes every connection is timed with its connects."""
    ctl = PaarcController(SMALL, 0.0)
    now = 0.0
    for i in range(2000):
        now += 0.002
        fresh = not pooled or i % 2 == 0
        ctl.on_sample(now, Sample(Signal.OK, 3 * TTFB if fresh else TTFB, ctl.limit(), fresh=fresh))
        ctl.tick(now)
    p50 = ctl.snapshot()["p50_ms"]
    assert p50 is not None
    if pooled:
        assert p50 == pytest.approx(TTFB * 1000)
    else:
        assert p50 == pytest.approx(3 * TTFB * 1000)  # the host's time includes its connects


def saturated_client() -> ClientLoad:
    client = ClientLoad()
    for _ in range(10):
        client.observe(0.030)  # each 0.1 s tick fired 30 ms late
    assert client.busy
    return client


def test_no_growth_for_a_near_host_while_the_downloaders_own_loop_is_saturated() -> None:
    """When the event loop's timer runs late, the client is the bottleneck: a near host (judged by
    rate alone) gets no more load, as it would only lengthen our own queue."""
    client = saturated_client()
    f = Feeder(PaarcController(SMALL, 0.0, client))
    assert max(f.intervals(20, ttfb=0.002)) == SMALL.C_init
    for _ in range(10):
        client.observe(0.001)
    assert not client.busy
    assert 0.5 <= client.busy_share < 1.0  # the run's share the client set the pace, for the summary


def test_a_cohort_holds_only_the_replies_to_requests_sent_since_the_interval_began() -> None:
    """A reply that arrives late (0.5 s) to a request sent before the step is not the cohort's,
    however late it comes; the cohort's mean is known once `need` answered with the limit in use."""
    win = Window(0.0)
    win.reset(10.0, 0.1)
    win.follow_cohort(4)
    win.add(10.2, Sample(Signal.OK, 0.5, 4))  # sent at 9.7, before the step
    for i in range(3):
        win.add(10.3 + i * 0.01, Sample(Signal.OK, 0.1, 4))
    assert win.cohort_mean() is None  # 3 answered: under MIN_SAMPLES
    for i in range(5):
        win.add(10.4 + i * 0.01, Sample(Signal.OK, 0.1 + 0.01 * (i % 2), 4))
    assert win.cohort_n == 8
    mean, rel_se = win.cohort_mean() or (0.0, 0.0)
    assert mean == pytest.approx((0.1 * 6 + 0.11 * 2) / 8) and 0 < rel_se < 0.05
    short = Window(0.0)
    short.reset(10.0, 0.1)
    short.follow_cohort(16)
    for i in range(20):
        short.add(10.2 + i * 0.01, Sample(Signal.OK, 0.1, 8))  # the limit of 16 never in use
    assert short.cohort_mean() is None


def replies(ctl: PaarcController, now: float, seconds: float, ttfb: float, inflight: int, rate: float) -> float:
    """Replies at `rate` per second for `seconds` (one at least), each `ttfb` old."""
    for _ in range(max(1, round(seconds * rate))):
        now += 1.0 / rate
        ctl.on_sample(now, Sample(Signal.OK, ttfb, inflight))
        ctl.tick(now)
    return now


@pytest.mark.parametrize(("cohorts", "after_cut"), [(True, 32), (False, 24)])
def test_the_cut_after_startup_keeps_a_level_whose_cohort_showed_no_queue(
        cohorts: bool, after_cut: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 300-ms host with 32 slots, doubled to 64. The interval that finds the queue served few
    replies (rates read during a ramp are rough: queue_tail's 32-slot host was once put at 28), and
    Little's law on its rate says 24. Judged on cohorts, 32 was a load all of whose requests
    answered with no queue, and the cut keeps it. An interval closed on its first replies proves
    nothing (they were mostly sent before the raise), so without cohorts the cut follows the rate."""
    if not cohorts:
        monkeypatch.setattr(controller, "COHORT_MIN_RTPROP_S", 10.0)
    ctl = PaarcController(PaarcParams(), 0.0)
    now = 0.0
    while ctl.limit() < 64 and now < 10.0:
        now = replies(ctl, now, 0.05, 0.3, ctl.limit(), ctl.limit() / 0.3)
    assert ctl.limit() == 64 and ctl.snapshot()["state"] == "STARTUP"
    replies(ctl, now, 1.5, 0.45, 64, 80.0)
    assert ctl.snapshot()["state"] == PROBE_BW
    assert ctl.limit() == after_cut


def past_init(ctl: PaarcController, ttfb: float) -> float:
    """OK replies of `ttfb` at C_init until INIT has closed; returns the time of the last one."""
    now = 0.0
    while ctl.snapshot()["state"] == "INIT":
        now += ttfb / ctl.p.C_init
        ctl.on_sample(now, Sample(Signal.OK, ttfb, ctl.p.C_init))
    return now


def test_a_slow_host_failing_in_startup_is_judged_without_waiting_for_its_steps_replies() -> None:
    """A slow host's STARTUP step waits for replies to its own requests; a host whose requests now
    time out sends none, and its failing interval is judged at its usual span (a hold), not after
    eight of them."""
    ctl = PaarcController(PaarcParams(), 0.0)
    now = past_init(ctl, ttfb=0.3)
    assert ctl.snapshot()["state"] == "STARTUP"
    until = now + 2.0  # the usual span is 4 x 0.3 s
    while now < until and ctl.snapshot()["state"] == "STARTUP":
        now += 0.05
        ctl.on_sample(now, Sample(Signal.TIMEOUT, None, ctl.limit()))
        ctl.tick(now)
    assert ctl.snapshot()["state"] == "BACKOFF"


def test_a_slow_hosts_step_counts_its_404s_as_replies() -> None:
    """The replies a slow host's STARTUP step waits for are any to its own requests, not only OK
    ones: a run of 404s (no latency to keep) is judged at the usual span, not after eight."""
    ctl = PaarcController(PaarcParams(), 0.0)
    now = past_init(ctl, ttfb=0.3)
    assert ctl.limit() == 16
    until = now + 3.0
    while now < until and ctl.limit() == 16:
        now += 0.3 / 16
        ctl.on_sample(now, Sample(Signal.OBJECT_ERROR, 0.3, 16))
        ctl.tick(now)
    assert ctl.limit() == 32


def test_a_baseline_read_while_our_loop_lagged_gives_way_to_the_first_interval_that_did_not() -> None:
    """The first interval lagged (every host of a manifest starting at once): a 16-slot 80-ms host read
    130 ms. Smoothed from there, the baseline stayed near 115 ms, a doubling to 24 (120 ms, a queue
    of half the host's capacity) looked unloaded, and the next doubling passed the host's hard cap
    of 32 (queue_tail's capped host: 16-22 429s and a 1-s hold). The first interval that did not lag
    sets the baseline afresh, and the doubling to 24 shows its queue."""
    client = ClientLoad()
    f = Feeder(PaarcController(PaarcParams(), 0.0, client))
    for _ in range(10):
        client.observe(0.030)
    f.interval(ttfb=0.13)  # INIT, lagged: our queue in every reply
    client.lag_s = 0.0  # the loop keeps up from here on
    limits = []
    for _ in range(12):
        f.interval(ttfb=0.08 * max(1.0, f.ctl.limit() / 16))
        limits.append(f.ctl.limit())
    assert max(limits) < 32, limits
    assert 12 <= limits[-1] <= 20, limits


def test_a_faster_interval_sets_a_run_starts_baseline_afresh_even_when_our_loop_lagged_in_it() -> None:
    """queue_tail's 16-slot, 80-ms host read 149 ms at a run's start (our loop saturated at a tick),
    then 82 ms at 16 with one more saturated tick. Smoothed together, the baseline read 129 ms: the
    doubling to 32 (164 ms) was cut by Little's law to 25, and the host cruised there, 60% over its
    capacity, its queue taken for its latency. Our lag only adds latency: the faster interval sets
    the baseline afresh, and the doubling's queue shows."""
    client = ClientLoad()
    ctl = PaarcController(PaarcParams(), 0.0, client)
    now = 0.0

    def interval(ttfb: float, busy_tick: bool) -> None:
        nonlocal now
        start, limit, sent = ctl.intervals, ctl.limit(), 0
        while ctl.intervals == start:
            now += ttfb / limit
            ctl.on_sample(now, Sample(Signal.OK, ttfb, limit))
            ctl.tick(now)
            sent += 1
            if busy_tick and sent == 4:
                client.observe(0.100)  # one tick far behind: our loop saturated once...
                client.lag_s = 0.002  # ... and no fair share of the host's latency otherwise

    interval(0.149, busy_tick=True)  # INIT
    interval(0.082, busy_tick=True)  # STARTUP at 16
    assert ctl.limit() == 32
    settled = []
    for _ in range(4):
        interval(0.082 * max(1.0, ctl.limit() / 16), busy_tick=False)
        settled.append(ctl.limit())
    assert max(settled) <= 18, settled


def test_a_first_interval_on_new_connections_gives_way_to_the_first_faster_one() -> None:
    """Every host of a long manifest accepting its first connections at once: queue_tail's 24-slot,
    120-ms host read 180-190 ms in its first interval, with our loop on time. Smoothed from there,
    the baseline hid a doubling to 32 (160 ms, a third over capacity), and the next doubling met its
    hard cap of 48 (16 429s and a hold in a third of the runs). Baselines from replies that mostly
    came on connections opened for them are provisional, as lagged ones are."""
    ctl = PaarcController(PaarcParams(), 0.0, ClientLoad())
    now = 0.0
    for _ in range(8):  # INIT: C_init requests, each on a connection of its own
        now += 0.185 / 8
        ctl.on_sample(now, Sample(Signal.OK, 0.185, 8, fresh=True))
    ctl.tick(now)
    f = Feeder(ctl, now)
    limits = []
    for _ in range(12):
        f.interval(ttfb=0.12 * max(1.0, f.ctl.limit() / 24))
        limits.append(f.ctl.limit())
    assert max(limits) <= 32, limits
    assert 18 <= limits[-1] <= 30, limits


def test_latency_added_by_our_own_lagging_loop_cuts_nothing() -> None:
    """A far host cruising at its limit: latency triples while our loop lags (our queue, not the
    host's) and the limit stays; the same latency with the loop keeping up is the host's, and cuts."""
    client = ClientLoad()
    f = Feeder(PaarcController(SMALL, 0.0, client))
    f.intervals(12)
    assert f.ctl.limit() == SMALL.C_max and f.ctl.snapshot()["state"] == PROBE_BW
    for _ in range(10):
        client.observe(0.030)
    assert f.intervals(10, ttfb=3 * TTFB) == [SMALL.C_max] * 10
    for _ in range(10):
        client.observe(0.001)
    f.interval(ttfb=3 * TTFB)  # the interval the lag ended in still holds lagged ticks
    assert min(f.intervals(4, ttfb=3 * TTFB)) < SMALL.C_max


@pytest.mark.parametrize(("stalled", "cuts"), [(True, False), (False, True)], ids=["stalled", "on-time"])
def test_replies_that_waited_out_a_stall_of_our_loop_cut_nothing(stalled: bool, cuts: bool) -> None:
    """Our loop stalled (a shard's commit held it 150-200 ms), so every reply that came meanwhile
    is read late; they are handled before the late tick is, so the ticks' lag has not seen the
    stall yet. The tick's overdue due time tells it: no cut. The same latency with the tick on time
    is the host's, and cuts. (In the polite bench the stall cut a 12-slot capped host to 5 for 3 s.)"""
    client = ClientLoad()
    f = Feeder(PaarcController(SMALL, 0.0, client))
    f.intervals(12)
    assert f.ctl.limit() == SMALL.C_max
    limits = []
    for _ in range(2):  # a cruise cuts on marginal signs only when two intervals agree; this is severe
        client.next_due = f.now - 0.150 if stalled else f.now + 0.1
        f.interval(ttfb=3 * TTFB)
        limits.append(f.ctl.limit())
    assert client.busy_ticks == 0 and not client.busy  # no tick has seen the stall
    assert (min(limits) < SMALL.C_max) is cuts, limits


@pytest.mark.parametrize(("lag_s", "cuts"), [(0.006, False), (0.001, True)], ids=["fair-share", "small"])
def test_a_loop_lag_short_of_saturation_mutes_latency_only_where_it_is_a_fair_share(lag_s: float, cuts: bool) -> None:
    """Our loop runs late without being saturated (under LOOP_BUSY_LAG_S). At a 50-ms host a 6-ms
    lag is over a tenth of its latency, so a 40% rise may be our own delay: judged by rate, the limit
    stays. A 1-ms lag cannot hide such a rise: the same latency is the host's, and cuts."""
    client = ClientLoad()
    f = Feeder(PaarcController(SMALL, 0.0, client))
    f.intervals(12)
    assert f.ctl.limit() == SMALL.C_max
    for _ in range(20):
        client.observe(lag_s)
    assert not client.busy
    limits = f.intervals(6, ttfb=1.4 * TTFB)
    assert (min(limits) < SMALL.C_max) is cuts, limits


def test_object_errors_at_half_the_replies_never_lower_the_limit() -> None:
    f = Feeder(PaarcController(SMALL, 0.0))
    limits = f.intervals(30, every(2, Signal.OBJECT_ERROR))
    assert limits == sorted(limits)
    assert limits[-1] == SMALL.C_max
    assert f.ctl.counters.object_errors >= f.ctl.counters.requests // 2


def test_fast_404s_do_not_look_like_inflation() -> None:
    """404s answered 10x faster than images must not pull RTprop down nor flag the images as slow."""
    ctl = PaarcController(SMALL, 0.0)
    now, limits = 0.0, []
    for i in range(3000):
        now += TTFB / ctl.limit()
        sig, ttfb = (Signal.OBJECT_ERROR, TTFB / 10) if i % 2 else (Signal.OK, TTFB)
        ctl.on_sample(now, Sample(sig, ttfb, ctl.limit()))
        limits.append(ctl.limit())
    assert limits == sorted(limits) and limits[-1] == SMALL.C_max


def test_one_timeout_per_interval_is_not_overload() -> None:
    f = steady()
    # The first reply of each 0.25 s times out: at most one per controller interval (0.2 s).
    limits = f.intervals(20, lambda i: Signal.TIMEOUT if i == 0 else Signal.OK)
    assert min(limits) == SMALL.C_max
    assert f.ctl.counters.timeouts == 20


def test_sustained_timeouts_back_off() -> None:
    f = steady()
    f.intervals(2, every(3, Signal.TIMEOUT))  # a third of the replies time out, for a whole interval
    assert f.ctl.limit() == int(64 * 0.7)
    assert f.ctl.counters.timeouts > 0
    limits = f.intervals(20, lambda i: Signal.TIMEOUT)  # the host went dark: keep backing off
    assert limits[-1] == SMALL.C_min


def test_server_error_bursts_back_off_but_a_stray_500_does_not() -> None:
    f = steady()
    f.intervals(5, lambda i: Signal.SERVER_ERROR if i == 0 else Signal.OK)
    assert f.ctl.limit() == SMALL.C_max
    f.intervals(2, every(4, Signal.SERVER_ERROR))
    assert f.ctl.limit() == int(64 * 0.7)


def test_latency_inflation_cuts_once_then_holds_when_the_host_itself_slowed() -> None:
    """Latency triples whatever our load: cut once (toward rate x RTprop), then stop cutting.

    A cut that does not bring latency down shows the slowness is not our queue, so the controller
    takes the new latency as its base instead of spiralling down to C_min. When the host speeds up
    again, up-probes climb back.
    """
    f = steady()
    slow = f.intervals(8, ttfb=3 * TTFB)
    assert 15 <= slow[-1] < int(64 * 0.7) + 1
    assert len(set(slow[2:])) == 1  # held, not spiralling
    assert f.ctl.snapshot()["rtprop_ms"] == 150.0
    f.intervals(20, ttfb=3 * TTFB)
    # The smoothed history of the faster host must not drag the new base back under it.
    assert f.ctl.snapshot()["base_lat_ms"] == pytest.approx(150.0, rel=0.01)
    assert f.intervals(30)[-1] == SMALL.C_max


def test_app_limited_host_does_not_grow() -> None:
    """A host with only a few URLs queued never fills its limit: no evidence, no growth."""
    ctl = PaarcController(SMALL, 0.0)
    now = 0.0
    for _ in range(400):
        now += 0.0125
        ctl.on_sample(now, Sample(Signal.OK, TTFB, 2))
    assert ctl.limit() == SMALL.C_init


# -- bounds, snapshot, memory ----------------------------------------------------------------------
SIGNALS = st.sampled_from(list(Signal))
SAMPLES = st.tuples(
    st.floats(0.0, 2.0),  # time since the previous event
    SIGNALS,
    st.one_of(st.none(), st.floats(1e-4, 10.0)),  # ttfb
    st.integers(0, 3000),  # inflight
    st.one_of(st.none(), st.floats(0.0, 120.0)),  # retry_after
    st.booleans(),  # also tick
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(SAMPLES, max_size=400),
    st.integers(1, 5),
    st.integers(0, 20),
    st.integers(0, 300),
)
def test_limit_stays_within_bounds_under_any_stream(
    stream: list[tuple[float, Signal, float | None, int, float | None, bool]],
    c_min: int, init_extra: int, max_extra: int,
) -> None:
    p = PaarcParams(C_min=c_min, C_init=c_min + init_extra, C_max=c_min + init_extra + max_extra)
    ctl = PaarcController(p, 0.0)
    now = 0.0
    refused_before = False
    for dt, sig, ttfb, inflight, retry_after, tick in stream:
        now += dt
        ctl.on_sample(now, Sample(sig, ttfb, inflight, retry_after))
        # Retry-After holds the host when the reply speaks for it: any non-refusal that carries
        # one, and always a host's first refusal. Later stray refusals hold only their URL.
        if retry_after is not None and (sig is not Signal.OVERLOAD or not refused_before):
            assert ctl.hold_until() >= now + retry_after
        refused_before = refused_before or sig is Signal.OVERLOAD
        if tick:
            ctl.tick(now + dt / 2)
        assert p.C_min <= ctl.limit() <= p.C_max
    json.dumps(ctl.snapshot(), allow_nan=False)


def test_snapshot_is_flat_json_with_the_telemetry_keys() -> None:
    f = steady()
    snap = f.ctl.snapshot()
    need = {"state", "limit", "inflight", "rtprop_ms", "p50_ms", "p95_ms", "goodput"}
    need |= set(f.ctl.counters.as_dict())
    assert need <= set(snap)
    assert all(v is None or isinstance(v, (int, float, str)) for v in snap.values())
    json.dumps(snap, allow_nan=False)
    assert snap["rtprop_ms"] == 50.0 and snap["limit"] == 64 and snap["inflight"] == 64
    assert float(snap["goodput"] or 0) == 64 / TTFB  # 64 in flight, 50 ms each


def test_fresh_snapshot_has_nulls_not_nans() -> None:
    snap = PaarcController().snapshot()
    assert snap["state"] == "INIT" and snap["rtprop_ms"] is None
    json.dumps(snap, allow_nan=False)


def _grow_hosts(n: int) -> list[HostLimit]:
    opts = PaarcOptions()
    replies = [Sample(Signal.OK, 0.05 + 0.001 * k, 3) for k in range(3)]
    hosts = []
    for i in range(n):
        ctl = make_host_limit(opts, f"h{i}", float(i))
        for k, reply in enumerate(replies):
            ctl.on_sample(i + 0.01 * k, reply)
        hosts.append(ctl)
    return hosts


def test_controllers_are_small() -> None:
    """100k hosts fed a few replies each: under 2 KB a host (measured here: ~0.6 KB).

    RSS for the 100k (fast, includes allocator slack); tracemalloc for an exact 10k.
    """
    proc = psutil.Process()
    gc.collect()
    before = proc.memory_info().rss
    hosts = _grow_hosts(100_000)
    assert (proc.memory_info().rss - before) / len(hosts) < 2048
    del hosts
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        hosts = _grow_hosts(10_000)
        per_host = (tracemalloc.get_traced_memory()[0] - start) / len(hosts)
    finally:
        tracemalloc.stop()
    assert per_host < 2048, per_host


def test_a_busy_controller_keeps_a_bounded_sample_buffer() -> None:
    ctl = PaarcController(PaarcParams(C_init=500, C_max=2000), 0.0)
    for k in range(50_000):  # 50k replies inside one interval (50 ms never spans 4 RTprops)
        ctl.on_sample(k * 1e-6, Sample(Signal.OK, 0.05, 500))
    assert ctl.win.lat is not None and len(ctl.win.lat) < LAT_BUF_CAP


def test_a_cap_found_again_keeps_the_lower_cap() -> None:
    """A re-probe's refusals count only once their share speaks for the host, and by then the
    probe may be a few requests past the cap. The record keeps the cap found before (the lower),
    so the limit stays just under it. Keeping the probe's level instead let the next probe go past
    the cap within seconds: another hold, and a cut by beta (on the polite_long bench the cap-12
    host then ran at 8 for two seconds)."""
    ctl = PaarcController(PaarcParams(), 0.0)
    now = 0.0
    refusals = 0

    def serve(until: float) -> None:
        """A host that serves 12 at once: a request past that is refused at once, Retry-After 1."""
        nonlocal now, refusals
        while now < until:
            now += 0.004
            if now >= ctl.hold_until():
                ctl.on_sample(now, Sample(Signal.OK, 0.04, min(ctl.limit(), 12)))
                for _ in range(max(0, ctl.limit() - 12) * 8):  # fast 429s come back many times over
                    if ctl.snapshot()["state"] == BACKOFF:
                        break
                    now += 0.0005
                    ctl.on_sample(now, Sample(Signal.OVERLOAD, 0.0005, ctl.limit(), 1.0))
                    refusals += 1
            ctl.tick(now)

    serve(20.0)
    assert ctl.snapshot()["cap_seen"] == 13 and ctl.limit() == 12
    serve(40.0)  # the memory (30 s) expires, and a probe finds the cap where it was
    assert ctl.snapshot()["cap_seen"] == 13 and ctl.limit() == 12
    found_again = refusals
    serve(80.0)  # the lesson is now kept 60 s: no probe past the cap before then
    assert refusals == found_again
    assert ctl.limit() == 12


@pytest.mark.parametrize(("retried", "held_again"), [(False, True), (True, False)])
def test_only_fresh_refusals_in_a_row_hold_a_host_again(retried: bool, held_again: bool) -> None:
    """Right after its first hold a host has too few replies for a refused share, so four 429s in a
    row hold it again. Refused retries do not count: retries wait out the hold together and go
    first after it, and a URL that failed (503 twice, say) may well fail again."""
    ctl = PaarcController(PaarcParams(), 0.0)
    now = 0.0
    for _ in range(50):
        now += 0.01
        ctl.on_sample(now, Sample(Signal.OK, 0.01, 4))
        ctl.tick(now)
    ctl.on_sample(now, Sample(Signal.OVERLOAD, 0.001, 4, 1.0))  # the first refusal: held 1 s
    first_hold = ctl.hold_until()
    now = first_hold + 0.01
    ctl.tick(now)
    ctl.on_sample(now, Sample(Signal.OK, 0.01, 2))
    for _ in range(4):
        now += 0.001
        ctl.on_sample(now, Sample(Signal.OVERLOAD, 0.001, 2, 1.0, retried=retried))
    assert (ctl.hold_until() > first_hold) is held_again


def test_refusals_trim_a_pace_measured_high_but_never_under_its_floor() -> None:
    """A rate measured right after a hold counts the host's refilled burst (12/s for a 10/s
    bucket of 2): paced at 0.9x that, the host refused one request in a dozen for good, each too
    few to count. Each refusal now takes 2% off the ceiling, down to 85% of the measured rate. But
    a rate measured while we barely sent (a fast host in its cooldown read 7/s) must not pace
    a host that served 800/s: the pace's floor holds."""
    high = Pushback()
    high.rate_cap, high.pace, high.floor = 12.0, 10.8, 6.0
    for _ in range(10):
        high.refused(0.0)
    assert high.pace == pytest.approx(0.85 * 0.95 * 12.0)  # under the rate; no further
    bogus = Pushback()
    bogus.rate_cap, bogus.pace, bogus.floor = 7.0, 398.0, 398.0
    for _ in range(10):
        bogus.refused(0.0)
    assert bogus.pace == 398.0


@pytest.mark.parametrize(("left", "tail"), [(1000, False), (150, True)], ids=["many-rows-left", "last-rows"])
def test_a_paced_hosts_last_rows_go_out_at_its_measured_rate(left: int, tail: bool) -> None:
    """The creep lifts a quiet pace past the rate the host was measured to accept (a low reading is
    made up that way), and the host refuses now and then. In its last TAIL_S seconds of rows a
    refusal makes its row wait out the Retry-After with nothing else to send: the pace comes down to
    the measured rate there and grows no more. With many rows left it creeps on."""
    push = Pushback()
    push.rate_cap, push.pace, push.floor, push.creep = 100.0, 110.0, 50.0, 1.16
    push.refused_at, push.served_since = -10.0, 500  # quiet for long: the creep runs fast
    push.rows_left(left, 2.0)  # no replies metered: the reading is the rate
    for step in range(20):
        push.grow_pace(float(step) / 10, 0.0, send_rate=1000.0)
    assert (left <= 110.0 * TAIL_S) is tail
    if tail:
        assert push.pace == 100.0
    else:
        assert push.pace > 110.0


@pytest.mark.parametrize(("pace", "served", "tail_pace"),
                         [(103.0, 100.0, 100.0), (95.0, 95.0, 95.0), (120.0, 80.0, 86.0)],
                         ids=["crept-past-the-rate", "quiet-under-it", "refused-down-to-less"])
def test_a_paced_hosts_last_rows_go_out_at_what_it_accepts_lately(pace: float, served: float, tail_pace: float) -> None:
    """A ramp's reading can be low and seconds old (the bench's 100/s bucket read as 86/s) while the
    creep has since shown the host accepting more. The last rows go out at the higher of the reading
    and what the meter saw accepted lately (never faster than the pace, never slower than the
    reading): paced at the old reading, that bucket's last 2 s of rows ended 0.3 s late."""
    push = Pushback()
    push.rate_cap, push.pace, push.floor = 86.0, pace, 40.0
    push.restart_meter(10.0)
    for i in range(int(served * 1.5)):  # 1.5 s of OK replies at the rate the host accepted
        push.count_ok(10.0 + (i + 1) / served)
    push.rows_left(100, 11.5)
    assert push.tail
    assert push.pace == pytest.approx(tail_pace, rel=0.02)


def test_a_bucket_read_low_creeps_up_to_its_rate_within_a_few_seconds() -> None:
    """A ramp's reading can be 12% low (the polite bench's 100/s bucket read as 86-88/s when its cold
    start went out late). Paced at 0.95x that and quiet, it creeps: after 1 s quiet at 2%/s, the
    speed doubling every further quiet second, it passes the rate within 5 s (it took 7 s when
    the creep waited 2 s and doubled every 2 s, and the bucket ended 0.3-0.6 s late)."""
    push = Pushback()
    push.rate_cap, push.floor, push.refused_at = 87.0, 40.0, 0.0
    push.pace = push.ceiling()  # 0.95x the reading
    reached = None
    for step in range(1, 81):  # a pace step every 0.1 s, each with the replies it brought, none refused
        now = step / 10
        for _ in range(int(push.pace / 10)):
            push.reply(refused=False)
        push.grow_pace(now, 0.0, send_rate=1000.0)
        if reached is None and push.pace >= 100.0:
            reached = now
    assert reached is not None and reached <= 5.0, reached


def test_a_cap_a_cold_start_counted_one_high_is_found_lower_without_a_blind_cut() -> None:
    """The polite bench's cap12 (a hard cap of 12, 40 ms, Retry-After 1), as traced: the cold start's
    burst of 16 was refused three times, so the cap was remembered as 14, and a probe to 13 drew a
    refusal storm. A cut by beta took it to 7, under C_init, so an early PROBE_RTT stepped it down
    to 5, and it was back at 12 three seconds later. Refused past every load the host served, under
    the cap remembered, is the cap found lower: the limit goes back to what the host served. (The
    cold start's OKs at 16 in flight do not count as served: they went out while the limit was 8.)"""
    ctl = PaarcController(PaarcParams(), 0.0)
    now = 0.04
    while ctl.limit() == 8:  # INIT's replies, until its interval closes and the limit doubles
        now += 0.04 / 8
        ctl.on_sample(now, Sample(Signal.OK, 0.04, 8))
        ctl.tick(now)
    for _ in range(7):  # INIT's other replies, counted with the doubling's sends
        now += 0.0005
        ctl.on_sample(now, Sample(Signal.OK, 0.04, 16))
    for inflight in (16, 15, 14):  # three of the doubling's burst refused
        now += 0.0003
        ctl.on_sample(now, Sample(Signal.OVERLOAD, 0.002, inflight, 1.0))
    assert ctl.push is not None and ctl.push.ok_level == 0 and ctl.push.cap == 14
    now, after_storm = ctl.hold_until(), []
    while now < 6.0:  # the host takes 12; a 13th in flight is refused, the slot refused over and over
        now += 0.04 / 12
        if now >= ctl.hold_until():
            limit = ctl.limit()
            if limit > 12:
                while ctl.snapshot()["state"] != BACKOFF:
                    now += 0.0002
                    ctl.on_sample(now, Sample(Signal.OVERLOAD, 0.0002, limit, 1.0))
                after_storm.append(ctl.limit())
            else:
                ctl.on_sample(now, Sample(Signal.OK, 0.04, limit))
            if after_storm:
                after_storm.append(ctl.limit())
        ctl.tick(now)
    assert after_storm, "no probe reached the host's cap"
    assert ctl.snapshot()["cap_seen"] == 13
    assert min(after_storm) == 11  # what the host served, not a cut by beta to 7
    assert ctl.limit() == 12


def test_a_host_that_refuses_everything_without_retry_after_is_still_asked_once_a_second() -> None:
    """A host answering 503 to every request with no Retry-After (down for maintenance, say) has
    delivered nothing, so no share of a delivered rate bounds its pace. Halved at every refusal,
    its pace fell to one request in minutes and a 10-row run never ended. It stays at one a second
    or more (and each row still fails after its retries)."""
    ctl = PaarcController()
    now, sent, gaps, last_sent = 0.0, 0, [], None
    while now < 60.0:
        ready = max(ctl.hold_until(), (last_sent or 0.0) + ctl.min_gap(now))
        now = max(now, ready)
        if last_sent is not None:
            gaps.append(now - last_sent)
        last_sent, sent = now, sent + 1
        now += 0.002
        ctl.on_sample(now, Sample(Signal.OVERLOAD, ttfb=0.002, inflight=1))
        ctl.tick(now)
    assert max(gaps[10:]) <= 1.0 + 1e-9, max(gaps)
    assert 60 <= sent <= 6000, sent  # asked on, but paced: not as fast as the replies come

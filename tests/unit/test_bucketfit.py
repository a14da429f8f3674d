"""The token-bucket fit PAARC reads a refusing host's rate with (flowdc/paarc/bucketfit.py)."""

from __future__ import annotations

import random

import pytest

from flowdc.paarc.bucketfit import BucketFit, RevealLog, arrivals, fit_bucket
from flowdc.testing.fakehosts import TokenBucket

HOST_S = 0.010  # the host's own time for an OK; a refusal comes back in REFUSE_S
REFUSE_S = 0.0006


def bucket_replies(arrival_times: list[float], rate: float, burst: int, our_delay: list[float],
                   seed: int = 1) -> list[tuple[float, float, bool]]:
    """(sent, answered, ok) of requests that reached a token bucket at `arrival_times`, each sent
    `our_delay` before (our connect, a late loop), with the host's time spread by 10%."""
    rng = random.Random(seed)
    bucket, out = TokenBucket(rate, burst, now=0.0), []
    for at, delay in zip(arrival_times, our_delay, strict=True):
        ok = bucket.take(at)
        took = (HOST_S if ok else REFUSE_S) * rng.uniform(1.0, 1.1)
        out.append((at - delay, at + took, ok))
    return out


def cold_start_and_ramp(rate: float) -> tuple[list[float], list[float]]:
    """A cold start as the polite bench's: 8 requests whose connects spread them over 22 ms, then
    8 more 5 ms apart; a 1-s hold; then a ramp whose pace doubles every 0.1 s from 12/s."""
    arrivals_at = [0.025 + 0.0027 * i for i in range(8)] + [0.045 + 0.005 * i for i in range(8)]
    delays = [0.025 + 0.0027 * i * 0.1 for i in range(8)] + [0.002] * 8
    t, pace = 1.1, 12.0
    while t < 2.5:
        arrivals_at.append(t)
        delays.append(0.001)
        pace = 12.0 * 2.0 ** ((t - 1.1) / 0.1)
        t += 1.0 / pace
    return arrivals_at, delays


@pytest.mark.parametrize(("rate", "burst"), [(100.0, 10), (100.0, 1), (40.0, 5), (150.0, 3)])
def test_every_reply_of_a_cold_start_and_ramp_pins_the_buckets_rate(rate: float, burst: int) -> None:
    """Our late cold-start sends make a bucket look larger than it is (its refill meanwhile), and the
    ramp's model read the polite bench's 100/s bucket as 58-87/s from that. Timed by their answers,
    the replies up to the ramp's refusal leave only rates close to the true one."""
    times, delays = cold_start_and_ramp(rate)
    replies = bucket_replies(times, rate, burst, delays)
    assert not all(ok for _, _, ok in replies[:16])  # refused from cold
    refusal = next(i for i, r in enumerate(replies) if i >= 16 and not r[2])
    fit = fit_bucket(replies[: refusal + 1], around=0.7 * rate)
    assert fit is not None
    assert 0.9 * rate <= fit.low <= rate * 1.02 and rate * 0.98 <= fit.high <= 1.1 * rate, fit
    assert 0.9 * rate <= fit.clamp(0.7 * rate) <= rate * 1.02


def test_replies_no_bucket_explains_give_no_fit() -> None:
    """Refusals after long quiet spells (a full bucket would take them) are no token bucket's."""
    times = [0.5 * i for i in range(40)]
    replies = [(t, t + HOST_S, i % 3 != 0) for i, t in enumerate(times)]
    assert fit_bucket(replies, around=50.0) is None


def test_too_few_replies_or_no_refusal_give_no_fit() -> None:
    few = [(0.01 * i, 0.01 * i + HOST_S, i != 4) for i in range(5)]
    assert fit_bucket(few, around=100.0) is None
    all_ok = [(0.01 * i, 0.01 * i + HOST_S, True) for i in range(40)]
    assert fit_bucket(all_ok, around=100.0) is None


def test_arrivals_are_timed_by_the_answer_never_before_the_send() -> None:
    replies = [(0.0, 0.040, True), (0.030, 0.041, True), (0.031, 0.0316, False), (0.032, 0.0326, False)]
    got = arrivals(replies)
    assert [ok for _, ok in got] == [True, True, False, False]
    assert got[0][0] == pytest.approx(0.029)  # slow: its answer less the host's least time for an OK (11 ms)
    assert got[1][0] == 0.030  # as fast as the host ever is: it arrived when it was sent


def test_a_reveal_log_rereads_only_within_what_the_replies_allow() -> None:
    times, delays = cold_start_and_ramp(100.0)
    replies = bucket_replies(times, 100.0, 10, delays)
    refusal = next(i for i, r in enumerate(replies) if i >= 16 and not r[2])
    log = RevealLog()
    for reply in replies[: refusal + 1]:
        assert log.note(*reply)
    assert not log.due
    log.await_rest(replies[refusal][0], 70.0)
    assert log.due
    assert 90.0 <= log.reread() <= 102.0
    allowed = fit_bucket(replies[: refusal + 1], around=70.0)
    assert allowed is not None
    inside = (allowed.low + allowed.high) / 2.0
    log.await_rest(replies[refusal][0], inside)  # a reading the replies allow stands
    assert log.reread() == inside
    assert BucketFit(90.0, 110.0, 0).clamp(120.0) == 110.0

"""What a host announces of its request quota, read from a reply's headers.

Hosts that count requests per window often say how many are left and when the count starts over,
on every reply, so a client can stop before it is refused. Three spellings are in use:

- `RateLimit: "default";r=0;t=30` (the IETF httpapi drafts from 08 on: r remaining, t seconds), or
  the older `RateLimit: limit=100, remaining=0, reset=30`;
- `RateLimit-Remaining: 0` with `RateLimit-Reset: 30` (the earlier drafts);
- `X-RateLimit-Remaining: 0` with `X-RateLimit-Reset: 1767225600` (GitHub, Zenodo and many APIs).

A reset is seconds from now in the drafts and a Unix time in most X- headers, and each spelling is
found with the other's form: a value past 10^9 is taken for a Unix time (past 10^12, in
milliseconds), anything less for seconds from now. A value that is not a number is no announcement.
The scheduler keeps the count: what a reply says is left, less the requests still out, is spent by
each request sent, and a host with nothing left waits for the reset (Scheduler.finished and
take_ready; docs/politeness.md).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

UNIX_TIME_FROM = 1e9  # a reset this large is a point in time (2001 on), not a wait
UNIX_MS_FROM = 1e12
# A Retry-After or an announced reset is waited on for at most this long per attempt; once a row's
# attempts are spent it fails as transient and a rerun picks it up. One odd header must not park a
# run for a day.
MAX_HOLD_S = 600.0
SETTLE_S = 0.05  # held this much past the reset: its clock and ours, and a whole-second Unix time


def announced_quota(headers: Mapping[str, str], now: float | None = None) -> tuple[int, float] | None:
    """(requests left, seconds until the count starts over) as the reply announces them, or None.
    `now` is the Unix time (time.time() unless given)."""
    for remaining_name, reset_name in (("RateLimit-Remaining", "RateLimit-Reset"),
                                       ("X-RateLimit-Remaining", "X-RateLimit-Reset")):
        remaining = headers.get(remaining_name)
        if remaining is not None:
            return _quota(remaining, headers.get(reset_name), now)
    structured = headers.get("RateLimit")
    if structured is None:
        return None
    fields = _structured_fields(structured)
    if fields is None:
        return None
    return _quota(fields[0], fields[1], now)


def _structured_fields(value: str) -> tuple[str, str] | None:
    """(remaining, reset) from a `RateLimit` field: of the policy with the fewest requests left
    (`"name";r=N;t=S, ...`), or of the older draft's one dictionary (`limit=N, remaining=N, reset=S`)."""
    members = [_params(member.split(";")) for member in value.split(",")]
    # Of the fewest left, the longest reset: two spent policies hold until both start over (their
    # texts compared as strings held "10" over "50" and asked while the longer one was spent).
    candidates = [(left, -(_number(p["t"]) or 0.0), p["r"], p["t"]) for p in members if "r" in p and "t" in p
                  and (left := _number(p["r"])) is not None]
    if candidates:
        *_, remaining, reset = min(candidates)
        return remaining, reset
    whole = _params(value.split(","))
    return (whole["remaining"], whole["reset"]) if "remaining" in whole and "reset" in whole else None


def _params(parts: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for part in parts:
        key, sep, val = part.partition("=")
        if sep:
            params[key.strip().lower()] = val.strip().strip('"')
    return params


def _quota(remaining: str, reset: str | None, now: float | None) -> tuple[int, float] | None:
    left, at = _number(remaining), _number(reset)
    if left is None or at is None or left < 0:
        return None
    if at >= UNIX_MS_FROM:
        at /= 1000.0
    if at >= UNIX_TIME_FROM:
        at -= time.time() if now is None else now
    return int(left), min(max(at, 0.0) + SETTLE_S, MAX_HOLD_S)


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None

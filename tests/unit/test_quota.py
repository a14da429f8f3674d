"""Reading a host's announced quota (flowdc.quota) in each spelling hosts use."""

from __future__ import annotations

import pytest

from flowdc.quota import MAX_HOLD_S, SETTLE_S, announced_quota

NOW = 1_767_225_000.0  # a Unix time


@pytest.mark.parametrize("headers, expected", [
    ({"RateLimit-Remaining": "0", "RateLimit-Reset": "30"}, (0, 30.0)),  # the earlier drafts: seconds
    ({"ratelimit-remaining": "5", "ratelimit-reset": "2.5"}, (5, 2.5)),  # any case (a dict here: exact names)
    ({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(NOW) + 12)}, (0, 12.0)),  # Unix time
    ({"X-RateLimit-Remaining": "3", "X-RateLimit-Reset": str(int(NOW * 1000) + 4000)}, (3, 4.0)),  # in ms
    ({"X-RateLimit-Remaining": "1", "X-RateLimit-Reset": "7"}, (1, 7.0)),  # an X- header counting seconds
    ({"RateLimit": '"default";r=0;t=30'}, (0, 30.0)),  # drafts 08 on: a structured field
    ({"RateLimit": '"burst";r=40;t=1, "daily";r=2;t=300'}, (2, 300.0)),  # the policy with the fewest left
    # Two spent: the later reset (texts compared as strings held "10" over "50").
    ({"RateLimit": '"a";r=0;t=10, "b";r=0;t=50'}, (0, 50.0)),
    ({"RateLimit": '"a";r=0;t=9, "b";r=0;t=10'}, (0, 10.0)),
    ({"RateLimit": "limit=100, remaining=0, reset=9"}, (0, 9.0)),  # draft 07's dictionary
    ({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(NOW) - 5)}, (0, 0.0)),  # a reset past
])
def test_each_spelling_gives_what_is_left_and_the_wait(headers: dict[str, str], expected: tuple[int, float]) -> None:
    got = announced_quota(_headers(headers), now=NOW)
    assert got is not None
    assert (got[0], round(got[1] - SETTLE_S, 6)) == expected


@pytest.mark.parametrize("headers", [
    {},
    {"X-RateLimit-Remaining": "0"},  # no reset: nothing to hold until
    {"X-RateLimit-Reset": "30"},
    {"RateLimit-Remaining": "many", "RateLimit-Reset": "30"},
    {"RateLimit-Remaining": "-1", "RateLimit-Reset": "30"},
    {"RateLimit-Remaining": "0", "RateLimit-Reset": "nan"},
    {"RateLimit": "garbage"},
    {"RateLimit": '"default";q=100;w=60'},  # a policy alone (RateLimit-Policy's form) says nothing left
])
def test_no_announcement_without_both_numbers(headers: dict[str, str]) -> None:
    assert announced_quota(_headers(headers), now=NOW) is None


def test_a_far_reset_is_waited_on_no_longer_than_a_retry_after() -> None:
    assert announced_quota({"RateLimit-Remaining": "0", "RateLimit-Reset": "86400"}, now=NOW) == (0, MAX_HOLD_S)


def _headers(headers: dict[str, str]) -> object:
    from multidict import CIMultiDict

    return CIMultiDict(headers)  # as aiohttp hands them over: case-insensitive

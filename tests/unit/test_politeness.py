from __future__ import annotations

import pytest

from flowdc import __version__
from flowdc.politeness import DEFAULT_DISALLOWED, disallowed_directive, user_agent

BANNED = frozenset(DEFAULT_DISALLOWED)


def test_user_agent_names_flowdc_the_contact_and_the_token() -> None:
    assert user_agent() == f"FLOW-DC/{__version__}"
    expected = f"FLOW-DC/{__version__} (+https://lab.example/crawl) labcrawl"
    assert user_agent("labcrawl", "https://lab.example/crawl") == expected


@pytest.mark.parametrize(("values", "token", "found"), [
    (["noai"], None, "noai"),
    (["noarchive, NoImageAI"], None, "noimageai"),
    (["noarchive", "nofollow"], None, None),
    (["otherbot: noindex"], None, None),  # meant for another crawler
    (["otherbot: noindex", "noai"], None, "noai"),
    (["labcrawl: noindex"], "LabCrawl", "noindex"),  # addressed to our token
    (["flow-dc: noai"], None, "noai"),
    (["unavailable_after: 25 Jun 2010 15:00:00 PST, noindex"], None, "noindex"),  # a valued directive, no crawler
    (["otherbot: noarchive, noindex"], None, None),  # the whole value is for otherbot
])
def test_x_robots_tag_directives(values: list[str], token: str | None, found: str | None) -> None:
    assert disallowed_directive(values, BANNED, token) == found


def test_a_configured_list_replaces_the_default() -> None:
    assert disallowed_directive(["noindex"], frozenset({"noai"})) is None
    assert disallowed_directive(["noai"], frozenset()) is None

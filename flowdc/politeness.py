"""Who we say we are (User-Agent) and the opt-outs we honour (X-Robots-Tag).

A site may ask, per response, that its images not be used for AI training or indexed:
`X-Robots-Tag: noai, noimageai` (or `noindex`). A directive may name the crawler it is for
(`X-Robots-Tag: otherbot: noindex`); those meant for other crawlers are ignored. A response that
carries a disallowed directive is not stored: the row is `skipped` with reason
`x_robots_tag:<directive>`.
"""

from __future__ import annotations

from collections.abc import Iterable

PRODUCT = "FLOW-DC"
DEFAULT_DISALLOWED = ("noai", "noimageai", "noindex", "noimageindex")
# Directives whose own value holds a colon: never a crawler's name.
_VALUED = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})
OUR_NAMES = frozenset({"flow-dc", "flowdc", "*"})


def user_agent(token: str | None = None, contact_url: str | None = None) -> str:
    """`FLOW-DC/VERSION (+CONTACT)`, then the user's token: sites see who fetches and whom to ask."""
    from flowdc import __version__

    ua = f"{PRODUCT}/{__version__}"
    if contact_url:
        ua += f" (+{contact_url})"
    return f"{ua} {token}" if token else ua


def disallowed_directive(values: Iterable[str], disallowed: frozenset[str], token: str | None = None) -> str | None:
    """The first disallowed directive of the X-Robots-Tag header values that applies to us, or None."""
    names = OUR_NAMES | ({token.lower()} if token else set())
    for value in values:
        applies = True  # until a part names a crawler: then only when it names us
        for part in value.split(","):
            part = part.strip().lower()
            head, colon, rest = part.partition(":")
            if colon and head.strip() not in _VALUED:
                applies = head.strip() in names
                part = rest.strip()
            if applies and part in disallowed:
                return part
    return None

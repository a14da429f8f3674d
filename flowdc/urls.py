"""URL facts the whole tool agrees on: which host a URL belongs to, and which schemes we fetch."""

from __future__ import annotations

from urllib.parse import urlsplit

FETCHABLE_SCHEMES = frozenset({"http", "https"})


def host_key(url: str) -> str:
    """The politeness unit: lower-cased host[:port] without user info. '' when there is none.

    partition.py computes the same thing vectorised; keep the two in step.
    """
    try:
        netloc = urlsplit(url.strip()).netloc
    except ValueError:
        return ""
    return netloc.rpartition("@")[2].lower()


def scheme_error(url: str) -> str | None:
    """Why a URL will not be fetched, or None when it may be."""
    head = url[:8].lower()
    if not head.startswith(("http://", "https://")):
        # Cheap path for whole manifests of other schemes: no full parse needed to refuse them.
        scheme, sep, _ = url.partition(":")
        if not sep or not scheme.isascii() or not scheme.replace("+", "").replace("-", "").replace(".", "").isalnum():
            return "unsupported_scheme:none"
        scheme = scheme.lower()
        return "invalid_url" if scheme in FETCHABLE_SCHEMES else f"unsupported_scheme:{scheme}"
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return "invalid_url"
    if parts.scheme.lower() not in FETCHABLE_SCHEMES:
        return f"unsupported_scheme:{parts.scheme or 'none'}"
    if not parts.netloc:
        return "invalid_url"
    return None

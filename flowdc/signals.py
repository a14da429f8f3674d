"""What one finished request tells a host's controller.

Kept apart from fetch.py so the pure controller (flowdc/paarc/) can use it without any I/O import.
Host signals (the host is overloaded) are kept apart from object signals (this one URL is bad or
big), because only the former may lower a host's concurrency.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Signal(Enum):
    OK = "ok"  # headers arrived and the body was read in full
    OBJECT_ERROR = "object_error"  # 404/403/410, bad content type, too large: about the object, not the host
    OVERLOAD = "overload"  # 429 or 503: the host says "slow down"
    SERVER_ERROR = "server_error"  # other 5xx
    TIMEOUT = "timeout"  # no headers (or body) within the timeout
    CONN_ERROR = "conn_error"  # refused, reset, truncated body
    # The request never reached the host, for reasons that say nothing about its load: the name did
    # not resolve, the address is refused, the certificate is not trusted, the proxy failed the
    # CONNECT. The scheduler frees the slot and tells the host's controller nothing.
    NOT_SENT = "not_sent"

    # Enum's own hash is a Python call (of the member's name), and the controller looks signals up in
    # sets for every reply. A member is its only instance, so its identity hashes it as well.
    __hash__ = object.__hash__


@dataclass(frozen=True, slots=True)
class Sample:
    """One completed request as the controller sees it.

    ttfb is seconds from the request's start to the response headers, or None when no headers
    arrived. On a pooled connection that is the host's time to first byte; `fresh` marks a request
    that opened its connection, whose ttfb also holds the connect and TLS handshake. retry_after
    is seconds to hold the host, already resolved from either Retry-After form. `retried` marks a
    request that repeats one that failed.
    """

    signal: Signal
    ttfb: float | None
    inflight: int
    retry_after: float | None = None
    fresh: bool = False
    retried: bool = False

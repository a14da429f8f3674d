"""One HTTP exchange -> an Outcome: status, reason, retryable, host signal, TTFB, body and sha256.

TTFB is measured from the request's start to its response headers, so the body transfer never
inflates it. On a pooled connection the request goes out at once, so that is the host's time to
first byte; a request that had to open its connection is flagged (`fresh_connection`), because
its time also holds the connect and TLS handshake. (aiohttp's trace hooks would time the send
itself, but cost five awaits per request: a tenth of the throughput on fast hosts.) A body is
only returned when it arrived whole.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import re
import socket
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple, TypeVar

import aiohttp
from yarl import URL

from flowdc.addresses import BlockedAddress
from flowdc.deadlines import deadlines
from flowdc.imagesig import NOT_AN_IMAGE, SNIFF_BYTES, image_format_ok
from flowdc.network import make_connector, watch_of
from flowdc.politeness import DEFAULT_DISALLOWED, disallowed_directive, user_agent
from flowdc.quota import MAX_HOLD_S, announced_quota
from flowdc.signals import Signal
from flowdc.urls import host_key, scheme_error

MAX_RETRY_AFTER_S = MAX_HOLD_S
FINAL_STATUSES = frozenset({400, 401, 403, 404, 405, 406, 410, 414, 451})
OVERLOAD_STATUSES = frozenset({429, 503})
CHUNK = 1 << 16


# Types that say only "bytes": an object store's default for a file uploaded without its type
# (S3's binary/octet-stream, GCS's application/octet-stream), a download link's, or none at all.
# Many image buckets serve every image so. Where every image type is accepted, a body of such a type
# is kept when its first bytes are an image's (imagesig); an HTML page or a zip is not.
GENERIC_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream", "application/binary",
                           "application/x-binary", "application/unknown", "application/download",
                           "application/x-download", "application/force-download"})


@dataclass(frozen=True, slots=True)
class FetchSettings:
    """A download's request settings; their defaults are declared once, in config.DownloadConfig."""

    timeout: float
    max_body_bytes: int
    content_types: tuple[str, ...]
    max_redirects: int
    disallowed_directives: frozenset[str] = frozenset(DEFAULT_DISALLOWED)  # X-Robots-Tag opt-outs honoured
    user_agent_token: str | None = None  # X-Robots-Tag may address our crawl by this name
    sniff_generic: bool = field(init=False)  # GENERIC_TYPES are judged by their first bytes

    def __post_init__(self) -> None:
        # Lower-cased once here, not per response.
        object.__setattr__(self, "content_types", tuple(p.lower() for p in self.content_types))
        object.__setattr__(self, "sniff_generic", any("image/".startswith(p) for p in self.content_types))
        object.__setattr__(self, "disallowed_directives", frozenset(d.lower() for d in self.disallowed_directives))

    @classmethod
    def of(cls, cfg: Any) -> FetchSettings:
        """From a DownloadConfig (or anything with its field names)."""
        return cls(cfg.timeout, cfg.max_body_bytes, tuple(cfg.content_types), cfg.max_redirects,
                   frozenset(getattr(cfg, "disallowed_header_directives", DEFAULT_DISALLOWED)),
                   getattr(cfg, "user_agent_token", None))


@dataclass(slots=True)
class Outcome:
    signal: Signal
    status: int | None = None
    reason: str | None = None  # None means success
    retryable: bool = False
    ttfb: float | None = None
    retry_after: float | None = None
    body: bytes | None = None
    sha256: str | None = None  # hashed off the event loop, by the writer (digest())
    content_type: str | None = None
    fresh_connection: bool = False  # the request opened its connection: ttfb includes the connect
    # False: retrying in this run cannot help (an untrusted certificate, a name that does not exist),
    # but a later run may (a --ca_bundle given, DNS fixed), so the row stays `retryable` in the ledger.
    retry_now: bool = True
    skipped: bool = False  # the site opted out (X-Robots-Tag): recorded as skipped, not failed
    quota: tuple[int, float] | None = None  # the host's announced (requests left, seconds to its reset)
    via: str | None = None  # the host that answered, where redirects led away from the one asked

    @property
    def ok(self) -> bool:
        return self.reason is None


OutcomeT = TypeVar("OutcomeT", bound=Outcome)  # an outcome type: Outcome, or a command's richer one (size.Probe)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header in either form (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²" is a digit to isdigit(), not to float()
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    wait = when.timestamp() - (time.time() if now is None else now)
    return min(max(wait, 0.0), MAX_RETRY_AFTER_S)


# Connections that have carried a response: the protocol objects of aiohttp's pool, held weakly.
_USED_CONNECTIONS: weakref.WeakSet[Any] = weakref.WeakSet()


def opened_for(resp: aiohttp.ClientResponse) -> bool:
    """True when `resp` came on a connection opened for its request, not taken from the pool."""
    # The connection itself is already released when a small body came with the headers.
    proto = getattr(resp, "_protocol", None)
    if proto is None or proto in _USED_CONNECTIONS:
        return False
    _USED_CONNECTIONS.add(proto)
    return True


def classify_status(status: int) -> tuple[Signal, bool]:
    """(host signal, retryable) for a non-2xx status."""
    if status == 407:  # only a proxy asks for proxy credentials: the host never saw the request
        return Signal.NOT_SENT, True
    if status in OVERLOAD_STATUSES:
        return Signal.OVERLOAD, True
    if status == 408:
        return Signal.TIMEOUT, True
    if status >= 500:
        return Signal.SERVER_ERROR, True
    return Signal.OBJECT_ERROR, False  # other 4xx: about this object, final


def status_reason(status: int) -> str:
    return "proxy_refused" if status == 407 else f"http_{status}"


class Failure(NamedTuple):
    signal: Signal
    reason: str
    retryable: bool
    retry_now: bool = True
    status: int | None = None


_DNS_TRANSIENT = frozenset({socket.EAI_AGAIN, getattr(socket, "EAI_SYSTEM", -11)})


def network_failure(exc: BaseException) -> Failure | None:
    """The failures of reaching a host (proxy, DNS, address rules, TLS), each with its own reason;
    None for anything else. fetch_one and size name them alike through this one mapping."""
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        # The CONNECT failed (https origins): about the proxy, not the host, so no host signal.
        if exc.status in (401, 403, 407):  # tinyproxy answers wrong credentials with 401
            return Failure(Signal.NOT_SENT, "proxy_refused", True, status=exc.status)
        return Failure(Signal.NOT_SENT, f"proxy_http_{exc.status}", True, status=exc.status)
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return Failure(Signal.NOT_SENT, "proxy_unreachable", True)
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        if isinstance(exc.os_error, BlockedAddress):
            return Failure(Signal.NOT_SENT, "blocked_address", False)
        transient = getattr(exc.os_error, "errno", None) in _DNS_TRANSIENT
        return Failure(Signal.NOT_SENT, "dns_error", True, retry_now=transient)
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return Failure(Signal.NOT_SENT, "certificate_error", True, retry_now=False)
    if isinstance(exc, aiohttp.ClientSSLError):
        # A handshake that broke off may be a host under load: it stays a connection failure.
        return Failure(Signal.CONN_ERROR, "tls_error", True)
    return None


def status_outcome(resp: aiohttp.ClientResponse, kind: type[OutcomeT], **more: Any) -> OutcomeT:
    """A non-2xx answer as an outcome: its signal, reason, and Retry-After when it may be retried."""
    signal, retryable = classify_status(resp.status)
    retry_after = parse_retry_after(resp.headers.get("Retry-After")) if retryable else None
    return kind(signal, status=resp.status, reason=status_reason(resp.status), retryable=retryable,
                retry_after=retry_after, **more)


def content_type_allowed(content_type: str | None, allowed: tuple[str, ...]) -> bool:
    if not allowed:
        return True
    return (content_type or "").lower().startswith(allowed)  # `allowed` is lower-case: see FetchSettings


def fetch_one(session: aiohttp.ClientSession, url: str, settings: FetchSettings) -> Awaitable[Outcome]:
    """GET one URL's body (the download's request). A plain function handing back exchange's
    coroutine: a coroutine of its own would be one more frame for every resume of every request."""
    return exchange(session, "GET", url, settings.timeout, settings.max_redirects,
                    partial(_read_response, settings=settings), Outcome)


# A URL of these characters only (a lower-case host, every % starting an escape, no dot segment) is
# sent as written: yarl would parse it to the same request, but requoting it took 7 us of a request's
# event-loop time, against 4 us for this check and an unquoted parse. Any other URL is parsed in full.
_SENT_AS_WRITTEN = re.compile(r"https?://[a-z0-9.\-]+(?::[0-9]+)?(?:[/?][A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*)?\Z")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def request_url(url: str) -> str | URL:
    """What a request is made with: a URL already as it must be sent, unparsed (see above); else the text."""
    if _SENT_AS_WRITTEN.match(url) and "/." not in url and not ("%" in url and _BAD_ESCAPE.search(url)):
        return URL(url, encoded=True)
    return url


async def exchange(session: aiohttp.ClientSession, method: str, url: str, timeout: float, max_redirects: int,
                   read: Callable[[aiohttp.ClientResponse], Awaitable[OutcomeT]], kind: type[OutcomeT],
                   headers: Mapping[str, str] | None = None) -> OutcomeT:
    """One request of any command: `read` turns the response into an outcome of type `kind`; a
    failure becomes one too, with its reason named by `failure_of` (the one mapping)."""
    ttfb: float | None = None  # set once headers arrived
    start = time.perf_counter()
    clock = deadlines()  # the total timeout (flowdc/deadlines.py says why not aiohttp's)
    deadline = clock.start(timeout)
    try:
        async with session.request(
            method, request_url(url), headers=headers,
            # aiohttp raises on reaching its max_redirects (and treats 0 as unlimited); ours counts
            # redirects followed, so N follows N and refuses the N+1th, and 0 follows none.
            max_redirects=max_redirects + 1,
            timeout=_NO_TIMEOUT,
        ) as resp:
            ttfb = time.perf_counter() - start
            fresh = opened_for(resp)
            outcome = await read(resp)
            outcome.ttfb = ttfb
            outcome.fresh_connection = fresh
            outcome.quota = announced_quota(resp.headers)  # any command's request counts against it
            if resp.history and (answered := host_key(str(resp.url))) != host_key(url):
                outcome.via = answered
    except (Exception, asyncio.CancelledError) as exc:  # every client failure becomes a reason
        timed_out = isinstance(exc, asyncio.CancelledError)  # by the deadline, or from outside
        if timed_out and not deadline.absorbs():
            raise  # cancelled from outside: the worker is being stopped
        f = failure_of(TimeoutError() if timed_out else exc, headers_arrived=ttfb is not None)
        outcome = kind(f.signal, status=f.status, reason=f.reason, retryable=f.retryable, ttfb=ttfb,
                       retry_now=f.retry_now)
        drop_tracebacks(exc)
    finally:
        clock.end(deadline)
    watch = watch_of(session)
    if watch is not None and not watch.settled:
        watch.note(url, outcome.reason, outcome.status)  # raises ProxyError when the proxy refuses everything
    return outcome


def drop_tracebacks(exc: BaseException) -> None:
    """Let go of the tracebacks of a caught failure and of the errors chained to it, once it is named.

    aiohttp's connect path keeps the error it raises in a local of a frame on that error's own
    traceback: a cycle of about 80 objects per refused connection, which only the garbage collector
    frees. A run against hosts that refuse every connection spent a sixth of its time collecting
    them. Unlinked, the frames are freed as soon as the error is. (Clearing the frames instead could
    finalize a coroutine that is still suspended, when one error object is raised in several.)
    """
    seen: set[int] = set()
    chained: list[BaseException | None] = [exc]
    while chained:
        error = chained.pop()
        if error is not None and id(error) not in seen:
            seen.add(id(error))
            error.__traceback__ = None
            chained += (error.__cause__, error.__context__)


_NO_TIMEOUT = aiohttp.ClientTimeout()  # none of aiohttp's: the deadline times the whole request


def failure_of(exc: BaseException, headers_arrived: bool) -> Failure:
    """How a request that raised is named: the one mapping every command uses."""
    if isinstance(exc, aiohttp.TooManyRedirects):
        return Failure(Signal.OBJECT_ERROR, "too_many_redirects", False)
    if isinstance(exc, aiohttp.NonHttpUrlRedirectClientError):  # as the same URL in the manifest fails
        return Failure(Signal.OBJECT_ERROR, scheme_error(str(exc.args[0] if exc.args else "")) or "invalid_url", False)
    if isinstance(exc, (aiohttp.InvalidURL, aiohttp.InvalidUrlRedirectClientError)):
        return Failure(Signal.OBJECT_ERROR, "invalid_url", False)
    if isinstance(exc, TimeoutError):
        # Headers arrived but the body did not: the object is slow or huge, not the host overloaded.
        if headers_arrived:
            return Failure(Signal.OBJECT_ERROR, "body_timeout", True)
        return Failure(Signal.TIMEOUT, "timeout", True)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return Failure(Signal.CONN_ERROR, "truncated", True)
    network = network_failure(exc)  # proxy, DNS, address rules, TLS: before the connect errors they refine
    if network is not None:
        return network
    if isinstance(exc, aiohttp.ClientConnectorError):
        return Failure(Signal.CONN_ERROR, "connect_failed", True)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return Failure(Signal.CONN_ERROR, "disconnected", True)
    if isinstance(exc, (aiohttp.ClientError, ConnectionError, OSError)):
        return Failure(Signal.CONN_ERROR, "connection_error", True)
    # Anything else (a malformed header, say) is about this one URL; it must not end the run.
    return Failure(Signal.OBJECT_ERROR, f"error:{type(exc).__name__}", False)


def _refused_type(status: int, ctype: str | None) -> Outcome:
    """A reply whose Content-Type is not taken: `content_type:TYPE`, its parameters left out."""
    return Outcome(Signal.OBJECT_ERROR, status, f"content_type:{(ctype or 'none').split(';')[0]}")


async def _read_response(resp: aiohttp.ClientResponse, settings: FetchSettings) -> Outcome:
    status = resp.status
    ctype = resp.headers.get("Content-Type")
    if not 200 <= status < 300:
        return status_outcome(resp, Outcome, content_type=ctype)
    robots = resp.headers.getall("X-Robots-Tag", ())
    if robots and settings.disallowed_directives:
        directive = disallowed_directive(robots, settings.disallowed_directives, settings.user_agent_token)
        if directive is not None:  # before the body: an opted-out image is not even read
            return Outcome(Signal.OBJECT_ERROR, status, f"x_robots_tag:{directive}", content_type=ctype, skipped=True)
    generic = False
    if not content_type_allowed(ctype, settings.content_types):
        generic = settings.sniff_generic and (ctype or "").split(";")[0].strip().lower() in GENERIC_TYPES
        if not generic:
            return _refused_type(status, ctype)
    declared = resp.content_length
    if declared is not None and declared > settings.max_body_bytes:
        return Outcome(Signal.OBJECT_ERROR, status, "too_large", content_type=ctype)
    encoded = resp.headers.get("Content-Encoding", "identity") != "identity"
    if declared is not None and not encoded:
        body = await resp.read()  # the common case: one call, no per-chunk await
    else:
        # No trustworthy length: read in chunks so a huge body is refused before it is all in memory.
        parts: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(CHUNK):
            size += len(chunk)
            if size > settings.max_body_bytes:
                return Outcome(Signal.OBJECT_ERROR, status, "too_large", content_type=ctype)
            parts.append(chunk)
        body = b"".join(parts)
    if declared is not None and len(body) != declared and not encoded:
        return Outcome(Signal.CONN_ERROR, status, "truncated", True, content_type=ctype)
    if status == 206 and not _whole_range(resp.headers.get("Content-Range"), len(body)):
        # Part of a body nobody asked part of (a broken cache, say): a header check could pass it.
        return Outcome(Signal.OBJECT_ERROR, status, "partial_content", True, content_type=ctype)
    if not body:
        return Outcome(Signal.OBJECT_ERROR, status, "empty_body", content_type=ctype)
    if generic and not image_format_ok(body[:SNIFF_BYTES]):  # bytes of some other kind: refused by their type
        return _refused_type(status, ctype)
    if (ctype or "").lower().startswith("image/") and not image_format_ok(body[:SNIFF_BYTES], ctype):
        # Served as an image but not one (an HTML error page as image/jpeg): final, a retry gets the same.
        return Outcome(Signal.OBJECT_ERROR, status, NOT_AN_IMAGE, content_type=ctype)
    return Outcome(Signal.OK, status, None, False, body=body, content_type=ctype)


def _whole_range(content_range: str | None, size: int) -> bool:
    """Whether a 206's Content-Range (`bytes 0-N/TOTAL`) covers the whole body of `size` bytes."""
    unit, _, spec = (content_range or "").partition(" ")
    span, _, total = spec.partition("/")
    first, _, last = span.partition("-")
    return unit.strip().lower() == "bytes" and first == "0" and last.isdigit() and total.isdigit() \
        and int(last) + 1 == int(total) == size


GIL_FREE_HASH_BYTES = 2048  # hashlib lets go of the GIL for one update of this many bytes or more
# ... which costs a writer thread more than hashing the body: each let-go hands the GIL to the event
# loop, and the thread waits to get it back. sha256 runs at 0.4-2 GB/s, so a body under this takes
# 0.1-0.6 ms with the GIL held; a 24-KB thumbnail let go of it 20k times a run (docs/benchmarks.md).
HOLD_GIL_HASH_BELOW = 256 * 1024


def digest(body: bytes) -> str:
    """sha256 hex digest. A body up to a few hundred KB is fed in pieces hashlib hashes without
    letting go of the GIL: each let-go in a writer thread hands the GIL to the event loop and waits
    to get it back (on 2-KB images that doubled the run's futex calls, on 24-KB ones it cost 4-10% of
    a webdataset run's wall time); a large one releases it while it hashes."""
    if GIL_FREE_HASH_BYTES <= len(body) < HOLD_GIL_HASH_BELOW:
        h = hashlib.sha256()
        view = memoryview(body)
        for at in range(0, len(body), GIL_FREE_HASH_BYTES - 1):
            h.update(view[at:at + GIL_FREE_HASH_BYTES - 1])
        return h.hexdigest()
    return hashlib.sha256(body).hexdigest()


def make_session(global_limit: int, agent: str | None = None, *, net: Any = None) -> aiohttp.ClientSession:
    """One session for the whole run; the scheduler bounds concurrency, so the pool never queues.

    `net`: the run's config (its network options: proxy, ca_bundle, insecure, block_link_local,
    dns_threads; see flowdc/network.py) and its User-Agent options (user_agent_token, contact_url).
    Every command builds its session here.
    """
    agent = agent or user_agent(getattr(net, "user_agent_token", None), getattr(net, "contact_url", None))
    connector = make_connector(global_limit, net)
    return aiohttp.ClientSession(
        connector=connector,
        headers={"User-Agent": agent},
        auto_decompress=True,
    )


async def download_single(
    url: str,
    key: str,
    class_name: str | None,
    output_folder: str,
    output_format: str = "imagefolder",
    session: aiohttp.ClientSession | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """The seed's single-URL API: fetch one URL and store it as the original FLOW-DC did. imagefolder:
    `output_folder/LABEL/KEY.ext` (no folder without a class_name); webdataset: the flat
    `output_folder/KEY.ext` and `KEY.json` holding {"key", "url", "class_name"}. Settings not given
    are `flowdc download`'s defaults."""
    from flowdc.config import DownloadConfig
    from flowdc.storage import Destination
    from flowdc.writers.naming import extension_for, label_folder, sample_path

    if output_format not in ("imagefolder", "webdataset"):
        raise ValueError(f"output_format must be imagefolder or webdataset, got {output_format!r}")
    own = session is None
    session = session or make_session(4)
    try:
        settings = FetchSettings.of(DownloadConfig() if timeout is None else DownloadConfig(timeout=timeout))
        outcome = await fetch_one(session, url, settings)
    finally:
        if own:
            await session.close()
    result: dict[str, Any] = {"key": key, "url": url, "class_name": class_name, "status": outcome.status,
                              "ok": outcome.ok, "reason": outcome.reason, "ttfb": outcome.ttfb}
    if outcome.ok and outcome.body is not None:
        ext = extension_for(outcome.content_type, url, outcome.body)
        dest = Destination(output_folder)
        labelled = output_format == "imagefolder" and class_name is not None
        rel = sample_path(key, label_folder(class_name) if labelled else None, ext)
        await asyncio.to_thread(dest.write_bytes, rel, outcome.body)
        if output_format == "webdataset":
            meta = json.dumps({"key": key, "url": url, "class_name": class_name}).encode()
            await asyncio.to_thread(dest.write_bytes, sample_path(key, None, ".json"), meta)
        result.update(path=dest.url(rel), sha256=outcome.sha256 or digest(outcome.body), bytes=len(outcome.body))
    return result

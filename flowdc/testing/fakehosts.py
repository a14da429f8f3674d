"""Fake image hosts on loopback for the demo, the tests and the benchmarks.

Each HostSpec becomes one aiohttp server bound to its own 127.0.0.x address, so the downloader
sees distinct hosts. A host can behave like a real server under load: a FIFO queue in front of
a fixed number of service slots (latency grows with load), a hard cap that answers 429, a
token bucket, and a quota per fixed window, which it may announce on every reply (RateLimit-* or
X-RateLimit-* headers). Faults come either at random (seeded) or scripted per URL in the query string:

    ?fail=KIND[xN]        KIND is an HTTP status 400-599 (503, 429, 404, 500, ...) or one of
                          reset, truncate, stall; with xN only the first N attempts of this
                          exact path+query fail, without it all do
    ?retry_after=S        Retry-After seconds on a 429/503 (default: the host's retry_after_s)
    ?retry_after_date=1   send Retry-After as an HTTP-date instead of seconds
    ?size=N               body size in bytes (exact for N >= ~100; smaller gives a 1x1 PNG)
    ?ctype=TYPE           Content-Type to send (default image/png, or the fmt's type)
    ?fmt=F&w=W&h=H        a Pillow-encoded noise image instead of the PNG: F is jpeg, png, webp or gif,
                          W x H pixels (default 64 x 48); size is ignored
    ?body=corrupt         a JPEG cut in half: its header opens, a full decode fails
    ?body=badheader       a JPEG signature followed by noise: no decoder opens it
    ?body=html            an HTML page instead of the image (with ctype=image/jpeg: an error page
                          served as an image, as soft-blocking hosts do)
    ?redirect=N           N chained 302 redirects before the image
    ?redirect_to=URL      a 302 to URL (any scheme)
    ?nolength=1           chunked transfer, no Content-Length
    ?slowbody=S           headers at once, body trickles over S seconds
    ?head=405             HEAD answers 405 (GET still works)
    ?robots=VALUE         an X-Robots-Tag header with VALUE (repeat the parameter for several headers)
    ?partial=N            a 206 with only the body's first N bytes (and a Content-Range saying so), asked or not

GET with `Range: bytes=A-B` answers 206 with Content-Range; HEAD answers the Content-Length.

aiohttp clients (>= 3.10) resend an idempotent request once after a dropped connection, so a
client only sees `reset` when it happens twice in a row: script `fail=resetx2`, not `resetx1`.
Attempts are counted per exact path+query, so give every URL its own path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import math
import random
import socket
import ssl
import struct
import threading
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from multidict import CIMultiDict

T = TypeVar("T")

CONNECTION_FAULTS = ("reset", "truncate", "stall")  # besides these, a fault is an HTTP status
MAX_BODY = 64 * 1024 * 1024  # a ?size= beyond this is clamped: the farm must not eat the machine
MAX_STALL_S = 60.0  # a stalled request never hangs longer than this, whatever the spec says


@dataclass
class HostSpec:
    ip: str  # 127.0.0.x, or ::1 for an IPv6 host (URLs then hold [::1])
    port: int = 0  # 0 = pick a free port
    latency_s: float = 0.0  # service time before the headers, once a slot is held
    jitter_s: float = 0.0  # extra uniform [0, jitter_s) on each request, seeded
    capacity: int | None = None  # parallel service slots; more requests wait in a FIFO queue
    hard_cap: int | None = None  # more requests in the system than this -> 429 at once
    retry_after_s: float | None = None  # Retry-After sent with host 429s and scripted 429/503
    rate_per_s: float | None = None  # token bucket refill rate; an empty bucket -> 429
    burst: int = 1  # token bucket size
    # A quota of this many requests per `window_s` (fixed windows on the Unix clock, as APIs count
    # them); past it, 429 with Retry-After until the window starts over.
    window_quota: int | None = None
    window_s: float = 1.0
    # Announce the quota on every reply: "ietf" (RateLimit-Remaining, RateLimit-Reset in seconds),
    # "x" (X-RateLimit-Remaining, X-RateLimit-Reset as a Unix time), or None (say nothing).
    announce_quota: str | None = None
    image_bytes: int = 4096
    fault_rate: float = 0.0  # share of requests that get a random fault from `faults`
    faults: tuple[str, ...] = ()  # fault kinds as in ?fail=; ("503",) when empty
    seed: int = 0
    name: str = ""
    stall_s: float = MAX_STALL_S  # how long a "stall" holds the headers back (capped)
    keep_events: int = 0  # keep the last N (arrival, end, status, path_qs) tuples in stats
    # TLS: serve https with this certificate chain and key (PEM files); None serves plain http.
    tls_cert: str | None = None
    tls_key: str | None = None


# ---------------------------------------------------------------------------------------------
# Images: small valid PNGs, deterministic from the path, padded to an exact byte size.


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


HTML_PAGE = b"<!DOCTYPE html><html><head><title>Access denied</title></head><body>Please log in.</body></html>"
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_IEND = _chunk(b"IEND", b"")
_PAD_KIND = b"fdPd"  # private, ancillary, safe-to-copy: every decoder skips it


def _png(width: int, height: int, pixels: bytes) -> bytes:
    stride = 3 * width
    # Filter byte 0 per row; level 0 (stored) keeps the size predictable and the encoder fast.
    raw = b"".join(b"\x00" + pixels[r * stride : (r + 1) * stride] for r in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return _PNG_SIG + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw, 0)) + _IEND


def make_png(key: str, size: int) -> bytes:
    """A valid RGB noise PNG of exactly `size` bytes (or a 1x1 PNG when size is too small)."""
    seed = int.from_bytes(hashlib.blake2b(f"{key}|{size}".encode(), digest_size=8).digest(), "big")
    rng = random.Random(seed)
    width = 64 if size > 64 * 3 * 4 else max(1, (size - 100) // 3)
    stride = 1 + 3 * width
    height = max(1, (size - 100) // stride)
    while True:
        png = _png(width, height, rng.randbytes(3 * width * height))
        pad = size - len(png) - 12  # 12 = the pad chunk's own length, type and crc
        if pad >= 0 or height == 1:
            break
        height -= 1  # zlib overhead guessed low: one row less, then pad up
    if pad < 0:
        return png
    body = png[: -len(_IEND)]
    return body + _chunk(_PAD_KIND, bytes(pad)) + _IEND


PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "gif": "GIF"}


def make_image(key: str, fmt: str, width: int = 64, height: int = 48) -> bytes:
    """A noise image of `width` x `height` encoded by Pillow as `fmt` (jpeg, png, webp, gif)."""
    from PIL import Image

    seed = int.from_bytes(hashlib.blake2b(f"{key}|{fmt}".encode(), digest_size=8).digest(), "big")
    img = Image.frombytes("RGB", (width, height), random.Random(seed).randbytes(3 * width * height))
    buf = io.BytesIO()
    img.save(buf, format=PIL_FORMATS[fmt])
    return buf.getvalue()


def _special_body(kind: str, path: str) -> bytes:
    if kind == "html":
        return HTML_PAGE
    jpeg = make_image(path, "jpeg")
    if kind == "corrupt":
        return jpeg[: len(jpeg) // 2]
    return jpeg[:3] + random.Random(path).randbytes(500)  # badheader


class ImageCache:
    """LRU of generated images bounded by total bytes, not by count: sizes vary by 1000x.

    `preset` maps paths to bodies built beforehand (the bench's realistic JPEGs): served as they
    are, whatever ?size= says, so encoding them costs the farm nothing while it serves."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024, preset: Mapping[str, bytes] | None = None) -> None:
        self.max_bytes = max_bytes
        self.preset = preset or {}
        self._items: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._bytes = 0

    def get(self, path: str, size: int) -> bytes:
        if (body := self.preset.get(path)) is not None:
            return body
        key = (path, size)
        data = self._items.get(key)
        if data is not None:
            self._items.move_to_end(key)
            return data
        data = make_png(path, size)
        if len(data) <= self.max_bytes:
            self._items[key] = data
            self._bytes += len(data)
            while self._bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= len(old)
        return data


# ---------------------------------------------------------------------------------------------
# Load behaviour: FIFO service slots and a token bucket.


class FifoSlots:
    """Counting semaphore that serves waiters strictly in arrival order, like a server's queue."""

    def __init__(self, slots: int) -> None:
        self.free = slots
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed over just as we were cancelled: pass it on
            raise

    def release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():  # cancelled waiters stay in the deque until reached here
                fut.set_result(None)
                return
        self.free += 1


class TokenBucket:
    """`burst` tokens refilled at `rate_per_s`; a request takes one or is refused. On the monotonic
    clock, or on the times a caller passes (full at `now`)."""

    def __init__(self, rate_per_s: float, burst: int, now: float | None = None) -> None:
        self.rate = rate_per_s
        self.burst = max(1, burst)
        self.tokens = float(self.burst)
        self.stamp = time.monotonic() if now is None else now

    def take(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def wait_s(self) -> float:
        return max(0.0, (1.0 - self.tokens) / self.rate)


class FixedWindow:
    """`quota` requests per window of `window_s` seconds, counted on the Unix clock."""

    def __init__(self, quota: int, window_s: float) -> None:
        self.quota, self.window_s = quota, window_s
        self.window, self.used = -1, 0

    def take(self, now: float) -> tuple[bool, int, float]:
        """(accepted, requests left in this window, the Unix time it ends)."""
        window = math.floor(now / self.window_s)
        if window != self.window:
            self.window, self.used = window, 0
        accepted = self.used < self.quota
        self.used += accepted
        return accepted, self.quota - self.used, (window + 1) * self.window_s


def quota_headers(style: str, left: int, ends_at: float, now: float) -> dict[str, str]:
    """What a host announcing its quota adds to a reply, in whole seconds as servers send them."""
    if style == "x":
        return {"X-RateLimit-Remaining": str(left), "X-RateLimit-Reset": str(math.ceil(ends_at))}
    return {"RateLimit-Remaining": str(left), "RateLimit-Reset": str(math.ceil(ends_at - now))}


# ---------------------------------------------------------------------------------------------
# One host.


@dataclass(frozen=True, slots=True)
class _Fault:
    kind: str
    times: int | None  # None: every attempt fails


def is_fault_kind(kind: str) -> bool:
    return kind in CONNECTION_FAULTS or (kind.isdigit() and 400 <= int(kind) <= 599)


def parse_fault(value: str) -> _Fault | None:
    """'503x2' -> _Fault('503', 2); 'reset' -> _Fault('reset', None); unknown -> None."""
    kind, sep, count = value.partition("x")
    if not is_fault_kind(kind):
        return None
    if not sep:
        return _Fault(kind, None)
    return _Fault(kind, int(count)) if count.isdigit() else None


def _fmt_seconds(value: float) -> str:
    # Integers as RFC 9110 wants; fractions kept so tests can use sub-second holds.
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _abort(request: web.BaseRequest) -> None:
    """Drop the connection with a TCP RST, as a crashing server or middlebox would."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class FakeHost:
    """One fake image server. Start and stop it on the loop that will serve it."""

    def __init__(self, spec: HostSpec, images: ImageCache | None = None) -> None:
        bad = [k for k in spec.faults if not is_fault_kind(k)]
        if bad:
            raise ValueError(f"unknown fault kind(s) {bad}; use an HTTP status or {CONNECTION_FAULTS}")
        self.spec = spec
        self.images = images or ImageCache()
        self.port = spec.port
        self._runner: web.ServerRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Gauges live across resets: requests still in flight must find them consistent.
        self._slots = FifoSlots(spec.capacity) if spec.capacity else None
        self._in_system = 0
        self._in_service = 0
        self._reset_state()

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        # handler_cancellation: a client that gives up frees its slot, so stalls cannot pile up.
        server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        self._runner = web.ServerRunner(server, shutdown_timeout=0.5)
        await self._runner.setup()
        tls = None
        if self.spec.tls_cert:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(self.spec.tls_cert, self.spec.tls_key)
        site = web.TCPSite(self._runner, self.spec.ip, self.spec.port, reuse_address=True, backlog=4096,
                           ssl_context=tls)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def netloc(self) -> str:
        ip = self.spec.ip
        return f"[{ip}]:{self.port}" if ":" in ip else f"{ip}:{self.port}"  # an IPv6 host such as ::1

    @property
    def base_url(self) -> str:
        return f"{'https' if self.spec.tls_cert else 'http'}://{self.netloc}"

    @property
    def name(self) -> str:
        return self.spec.name or self.netloc

    # -- stats ---------------------------------------------------------------------------------

    def _reset_state(self) -> None:
        spec = self.spec
        self._rng = random.Random(spec.seed)
        self._bucket = TokenBucket(spec.rate_per_s, spec.burst) if spec.rate_per_s else None
        self._window = FixedWindow(spec.window_quota, spec.window_s) if spec.window_quota else None
        self._attempts: dict[str, int] = {}
        self._status: dict[int, int] = {}
        self._user_agents: set[str] = set()
        self._counts = {"requests": 0, "resets": 0, "truncates": 0, "stalls": 0, "bytes_sent": 0}
        self._max_in_system = self._in_system
        self._max_in_service = self._in_service
        self._events: deque[tuple[float, float, int, str]] = deque(maxlen=max(0, spec.keep_events))

    def reset_stats(self) -> None:
        """Forget counters, scripted-fault attempts and the RNG; refill the token bucket."""
        _on_loop(self._loop, self._reset_state)

    @property
    def stats(self) -> dict[str, Any]:
        """A snapshot, safe to take from any thread."""
        return _on_loop(self._loop, self._snapshot)

    def _snapshot(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "base_url": self.base_url,
            **self._counts,
            "ok": self._status.get(200, 0) + self._status.get(206, 0),
            "n_429": self._status.get(429, 0),
            "n_503": self._status.get(503, 0),
            "status": dict(self._status),
            "in_system": self._in_system,
            "max_in_system": self._max_in_system,
            "max_in_service": self._max_in_service,
            "attempts": dict(self._attempts),
            "user_agents": sorted(self._user_agents),
            "events": list(self._events),
        }

    # -- serving -------------------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        arrival = time.monotonic()
        self._counts["requests"] += 1
        self._user_agents.add(request.headers.get("User-Agent", ""))
        self._in_system += 1
        self._max_in_system = max(self._max_in_system, self._in_system)
        status = 0  # 0: no response (reset, or the client went away)
        try:
            resp = await self._admit(request)
            status = resp.status
            return resp
        finally:
            self._in_system -= 1
            if status:
                self._status[status] = self._status.get(status, 0) + 1
            if self._events.maxlen:
                self._events.append((arrival, time.monotonic(), status, request.path_qs))

    async def _admit(self, request: web.BaseRequest) -> web.StreamResponse:
        """Host-wide admission control first; it answers before any queueing, as a proxy would."""
        spec = self.spec
        if spec.hard_cap is not None and self._in_system > spec.hard_cap:
            return self._error(429, request, spec.retry_after_s)
        if self._bucket is not None and not self._bucket.take():
            wait = spec.retry_after_s if spec.retry_after_s is not None else math.ceil(self._bucket.wait_s())
            return self._error(429, request, wait)
        announced: dict[str, str] = {}
        if self._window is not None:
            now = time.time()
            accepted, left, ends_at = self._window.take(now)
            if spec.announce_quota:
                announced = quota_headers(spec.announce_quota, left, ends_at, now)
            if not accepted:
                resp = self._error(429, request, math.ceil(ends_at - now))
                resp.headers.update(announced)
                return resp
        if self._slots is None:
            return self._announced(await self._serve(request), announced)
        await self._slots.acquire()
        try:
            return self._announced(await self._serve(request), announced)
        finally:
            self._slots.release()

    @staticmethod
    def _announced(resp: web.StreamResponse, headers: dict[str, str]) -> web.StreamResponse:
        if headers and not resp.prepared:  # a streamed body's headers are gone already
            resp.headers.update(headers)
        return resp

    async def _serve(self, request: web.BaseRequest) -> web.StreamResponse:
        spec = self.spec
        query = request.query
        key = request.path_qs
        attempt = self._attempts[key] = self._attempts.get(key, 0) + 1
        self._in_service += 1
        self._max_in_service = max(self._max_in_service, self._in_service)
        try:
            delay = spec.latency_s + (self._rng.random() * spec.jitter_s if spec.jitter_s else 0.0)
            if delay > 0:
                await asyncio.sleep(delay)
            fault = self._pick_fault(query.get("fail"), attempt)
            if fault is not None and fault != "truncate":
                return await self._fault(fault, request)
            if "redirect_to" in query:
                return web.Response(status=302, headers={"Location": query["redirect_to"]})
            redirects = int(query.get("redirect", "0") or 0)
            if redirects > 0:
                return self._redirect(request, redirects)
            size = min(MAX_BODY, max(0, int(query.get("size", spec.image_bytes))))
            if query.get("body") in ("html", "corrupt", "badheader"):
                body = _special_body(query["body"], request.path)
            elif query.get("fmt") in PIL_FORMATS:
                body = make_image(request.path, query["fmt"], int(query.get("w", 64)), int(query.get("h", 48)))
            else:
                body = self.images.get(request.path, size)
            if fault == "truncate":
                return await self._truncated(request, body)
            return await self._image(request, body)
        finally:
            self._in_service -= 1

    def _pick_fault(self, scripted: str | None, attempt: int) -> str | None:
        if scripted:
            fault = parse_fault(scripted)
            if fault is not None and (fault.times is None or attempt <= fault.times):
                return fault.kind
        spec = self.spec
        if spec.fault_rate > 0 and self._rng.random() < spec.fault_rate:
            return self._rng.choice(spec.faults or ("503",))
        return None

    async def _fault(self, kind: str, request: web.BaseRequest) -> web.StreamResponse:
        if kind == "reset":
            self._counts["resets"] += 1
            _abort(request)
            raise asyncio.CancelledError  # nothing left to answer on; aiohttp drops the handler
        if kind == "stall":
            self._counts["stalls"] += 1
            await asyncio.sleep(min(self.spec.stall_s, MAX_STALL_S))
            return web.Response(status=504, text="stalled")
        retry_after = request.query.get("retry_after")
        return self._error(int(kind), request, float(retry_after) if retry_after else self.spec.retry_after_s)

    def _error(self, status: int, request: web.BaseRequest, retry_after: float | None) -> web.Response:
        headers = {}
        if retry_after is not None and status in (429, 503):
            if request.query.get("retry_after_date") == "1":
                headers["Retry-After"] = formatdate(math.ceil(time.time() + retry_after), usegmt=True)
            else:
                headers["Retry-After"] = _fmt_seconds(retry_after)
        return web.Response(status=status, text=f"fake {status}", headers=headers)

    def _redirect(self, request: web.BaseRequest, remaining: int) -> web.Response:
        query = request.url.query.copy()
        query.popall("redirect")
        if remaining > 1:
            query["redirect"] = str(remaining - 1)
        location = request.url.with_query(query).path_qs
        return web.Response(status=302, headers={"Location": location})

    async def _image(self, request: web.BaseRequest, body: bytes) -> web.StreamResponse:
        query = request.query
        headers: CIMultiDict[str] = CIMultiDict({"Content-Type": _content_type(query), "Accept-Ranges": "bytes"})
        for value in query.getall("robots", ()):
            headers.add("X-Robots-Tag", value)
        if request.method == "HEAD":
            if query.get("head") == "405":
                return web.Response(status=405, headers={"Allow": "GET"})
            headers["Content-Length"] = str(len(body))
            return web.Response(status=200, headers=headers)  # aiohttp sends no body on HEAD
        ranged = _parse_range(request.headers.get("Range"), len(body))
        if "partial" in query:  # a broken cache or server: part of the body, unasked
            ranged = (0, min(int(query["partial"]), len(body)) - 1)
        if ranged is not None:
            start, end = ranged
            headers["Content-Range"] = f"bytes {start}-{end}/{len(body)}"
            self._counts["bytes_sent"] += end - start + 1
            return web.Response(status=206, body=body[start : end + 1], headers=headers)
        self._counts["bytes_sent"] += len(body)
        slow = float(query.get("slowbody", "0") or 0)
        if query.get("nolength") == "1" or slow > 0:
            return await self._streamed(request, body, headers, slow, chunked=query.get("nolength") == "1")
        return web.Response(status=200, body=body, headers=headers)

    async def _streamed(
        self, request: web.BaseRequest, body: bytes, headers: dict[str, str], slow: float, *, chunked: bool
    ) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers=headers)
        if chunked:
            resp.enable_chunked_encoding()
        else:
            resp.content_length = len(body)
        await resp.prepare(request)
        pieces = max(1, min(10, len(body))) if slow > 0 else max(1, math.ceil(len(body) / 16384))
        step = math.ceil(len(body) / pieces) if body else 1
        for offset in range(0, len(body), step):
            if slow > 0:
                await asyncio.sleep(slow / pieces)
            await resp.write(body[offset : offset + step])
        await resp.write_eof()
        return resp

    async def _truncated(self, request: web.BaseRequest, body: bytes) -> web.StreamResponse:
        """Promise the whole body, send half, then drop the connection."""
        self._counts["truncates"] += 1
        ctype = _content_type(request.query)
        resp = web.StreamResponse(status=200, headers={"Content-Type": ctype})
        resp.content_length = len(body)
        await resp.prepare(request)
        await resp.write(body[: len(body) // 2])
        await asyncio.sleep(0.01)  # let the half reach the client before the close
        if request.transport is not None:
            request.transport.close()
        raise asyncio.CancelledError


def _content_type(query: Mapping[str, str]) -> str:
    fmt = query.get("fmt")
    return query.get("ctype", f"image/{fmt}" if fmt in PIL_FORMATS else "image/png")


def _parse_range(value: str | None, total: int) -> tuple[int, int] | None:
    """Single `bytes=A-B`, `bytes=A-` or `bytes=-N` ranges; anything else means the whole body."""
    if not value or not value.startswith("bytes=") or "," in value or total == 0:
        return None
    first, _, last = value[6:].strip().partition("-")
    try:
        if first:
            start, end = int(first), (int(last) if last else total - 1)
        else:
            start, end = max(0, total - int(last)), total - 1
    except ValueError:
        return None
    if start >= total or end < start:
        return None
    return start, min(end, total - 1)


# ---------------------------------------------------------------------------------------------
# Farms of hosts.


def _on_loop(loop: asyncio.AbstractEventLoop | None, fn: Callable[[], T], timeout: float = 10.0) -> T:
    """Run fn on the loop that owns the host state; directly when we are on it already."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if loop is None or running is loop or not loop.is_running():
        return fn()

    async def call() -> T:
        return fn()

    return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout)


class FakeHostFarm:
    """Starts one FakeHost per spec; use as `async with FakeHostFarm(specs) as farm:`."""

    def __init__(self, specs: Sequence[HostSpec], image_cache_bytes: int = 64 * 1024 * 1024,
                 preset: Mapping[str, bytes] | None = None) -> None:
        images = ImageCache(image_cache_bytes, preset)
        self.hosts = [FakeHost(spec, images) for spec in specs]

    async def __aenter__(self) -> FakeHostFarm:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        try:
            for host in self.hosts:
                await host.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        for host in self.hosts:
            await host.stop()

    def url(self, host_index: int, path: str) -> str:
        return self.hosts[host_index].base_url + ("" if path.startswith("/") else "/") + path

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per host, keyed by netloc (the downloader's host key)."""
        return {host.netloc: host.stats for host in self.hosts}

    def totals(self) -> dict[str, int]:
        """Counters summed over hosts (max_in_system is the largest of any one host)."""
        out: dict[str, int] = {}
        for st in self.stats().values():
            for k, v in st.items():
                if isinstance(v, int) and not isinstance(v, bool):
                    out[k] = max(out.get(k, 0), v) if k.startswith("max_") else out.get(k, 0) + v
        return out

    def reset_stats(self) -> None:
        for host in self.hosts:
            host.reset_stats()


@contextlib.contextmanager
def run_farm_in_thread(specs: Sequence[HostSpec], timeout_s: float = 15.0,
                       preset: Mapping[str, bytes] | None = None) -> Iterator[FakeHostFarm]:
    """Serve a farm from a background thread with its own loop, for sync callers and subprocesses."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fakehost-farm", daemon=True)
    thread.start()
    farm = FakeHostFarm(specs, preset=preset)
    try:
        asyncio.run_coroutine_threadsafe(farm.start(), loop).result(timeout_s)
        yield farm
    finally:
        try:
            asyncio.run_coroutine_threadsafe(farm.stop(), loop).result(timeout_s)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout_s)
            if not thread.is_alive():
                loop.close()


def write_manifest(
    path: str | Path,
    urls: Sequence[str],
    labels: Sequence[str | None] | None = None,
    extra_columns: dict[str, Sequence[Any]] | None = None,
    fmt: str | None = None,
    delimiter: str | None = None,
) -> Path:
    """Write a url[, label, extras...] manifest; fmt 'parquet' or 'csv', by default from the suffix.
    Delimited text (.csv, .tsv, .txt) is compressed as its suffix says (.gz, .bz2, .zst) and split
    by `delimiter`, by default tab for a .tsv, else comma."""
    import pyarrow as pa  # late: the servers themselves do not need Arrow

    from flowdc.manifest import compression_of, csv_delimiter, detect_format, is_manifest_name

    path = Path(path)
    fmt = fmt or ("csv" if is_manifest_name(path.name) and detect_format(path.name) == "csv" else "parquet")
    columns: dict[str, Any] = {"url": pa.array(list(urls), pa.string())}
    if labels is not None:
        columns["label"] = pa.array([None if x is None else str(x) for x in labels], pa.string())
    for name, values in (extra_columns or {}).items():
        columns[name] = pa.array(list(values))
    table = pa.table(columns)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        import pyarrow.csv as pcsv

        with pa.output_stream(path, compression=compression_of(str(path))) as out:
            # With no header to read yet, csv_delimiter gives what the reader expects of the name.
            pcsv.write_csv(table, out, pcsv.WriteOptions(delimiter=delimiter or csv_delimiter(str(path), b"")))
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, path)
    else:
        raise ValueError(f"fmt must be 'parquet' or 'csv', got {fmt!r}")
    return path

"""The DNS resolver of every session: the system's resolver on a bounded pool of threads, cached.

Chosen deliberately, and passed to the connector by name, so installing aiodns changes nothing
(aiohttp would otherwise switch to it by itself). The system resolver is what a cluster's admins
configured (nsswitch, /etc/hosts, nscd or sssd, search domains); c-ares (aiodns) reads only
resolv.conf and hosts. Its lookups block, so they run in a pool of their own: a manifest of 100k
distinct names then neither waits behind asyncio's small default pool (about six threads on two
cores, shared with file I/O) nor starts a thread per name. The loop only awaits futures.

Answers are cached per (name, port, family) for `ttl_s`, failures for `negative_ttl_s`, and
concurrent lookups of one name share one call. The cache is bounded (oldest first out).
Every address answered is checked against the address policy (flowdc/addresses.py): refused
ones are dropped, and a name left with none fails with BlockedAddress.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import queue
import socket
import threading
from collections.abc import Callable
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult

from flowdc.addresses import BlockedAddress, blocked_ip

DEFAULT_THREADS = 64
TTL_S = 300.0
NEGATIVE_TTL_S = 30.0
TRANSIENT_TTL_S = 1.0
MAX_ENTRIES = 200_000
_NUMERIC = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV

AddrInfo = tuple[Any, ...]
Lookup = Callable[..., list[AddrInfo]]  # socket.getaddrinfo's signature

getaddrinfo: Lookup = socket.getaddrinfo  # looked up at call time, so a test can put a stub resolver here


class LookupThreads:
    """`n` daemon threads answering lookups from one queue, for one event loop.

    Not a ThreadPoolExecutor: that starts its threads inside submit(), on the event loop, and a
    burst of new names then stalled the loop for a tenth of a second while hundreds of threads
    started. Here a thread of its own starts them, handing a lookup over is a queue put, and
    answers come back in batches: one wake-up of the loop for all that arrived meanwhile.
    """

    def __init__(self, n: int, loop: asyncio.AbstractEventLoop) -> None:
        self.n = n
        self.loop = loop
        self._queue: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._answers: collections.deque[tuple[Callable[[Any, BaseException | None], None], Any, Any]] = (
            collections.deque())
        self._lock = threading.Lock()
        self._wake_armed = False
        threading.Thread(target=self._start_all, name="flowdc-dns-start", daemon=True).start()

    def _start_all(self) -> None:
        for i in range(self.n):
            threading.Thread(target=self._serve, name=f"flowdc-dns-{i}", daemon=True).start()

    def _serve(self) -> None:
        while (item := self._queue.get()) is not None:
            done, fn, args = item
            try:
                result, error = fn(*args), None
            except Exception as exc:
                result, error = None, exc
            self._answers.append((done, result, error))
            with self._lock:
                if self._wake_armed:
                    continue
                self._wake_armed = True
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            self._wake_armed = False  # before taking answers: one that comes after arms a new wake-up
        while self._answers:
            done, result, error = self._answers.popleft()
            done(result, error)

    def submit(self, done: Callable[[Any, BaseException | None], None], fn: Callable[..., Any], *args: Any) -> None:
        self._queue.put((done, fn, args))

    def close(self) -> None:
        for _ in range(self.n):
            self._queue.put(None)


class PooledResolver(AbstractResolver):
    def __init__(self, threads: int = DEFAULT_THREADS, *, refuse_blocked: bool = True, ttl_s: float = TTL_S,
                 negative_ttl_s: float = NEGATIVE_TTL_S, max_entries: int = MAX_ENTRIES) -> None:
        self.threads = threads
        self.refuse_blocked = refuse_blocked
        self.ttl_s = ttl_s
        self.negative_ttl_s = negative_ttl_s
        self.max_entries = max_entries
        self._pool: LookupThreads | None = None  # started on the first lookup: literal-only runs need none
        # key -> (expires, answer or the exception to raise)
        self._cache: collections.OrderedDict[tuple[str, int, int], tuple[float, Any]] = collections.OrderedDict()
        self._pending: dict[tuple[str, int, int], asyncio.Future[list[ResolveResult]]] = {}
        self.lookups = 0  # calls that reached the system resolver (the rest came from the cache)

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET,
                      ) -> list[ResolveResult]:
        loop = asyncio.get_running_loop()
        key = (host, port, int(family))
        hit = self._cache.get(key)
        if hit is not None:
            if hit[0] > loop.time():
                if isinstance(hit[1], BaseException):
                    raise _fresh(hit[1])  # a new one each time: re-raising one object grows its traceback
                return hit[1]  # type: ignore[no-any-return]
            del self._cache[key]
        fut = self._pending.get(key)
        if fut is None:
            fut = self._pending[key] = loop.create_future()
            self.lookups += 1
            if self._pool is None:
                self._pool = LookupThreads(self.threads, loop)
            self._pool.submit(lambda result, error: self._settle(key, fut, result, error), self._lookup, *key)
        # shield: one caller giving up (a timeout) must not cancel the answer others wait for.
        return await asyncio.shield(fut)

    def _lookup(self, host: str, port: int, family: int) -> list[ResolveResult]:
        try:
            infos = getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_ADDRCONFIG)
        except (UnicodeError, ValueError):  # a name IDNA cannot encode: no such host, not a crash
            raise socket.gaierror(socket.EAI_NONAME, f"not a valid host name: {host!r}") from None
        out: list[ResolveResult] = []
        refused = 0
        for fam, _, proto, _, address in infos:
            if fam not in (socket.AF_INET, socket.AF_INET6):
                continue
            if self.refuse_blocked and blocked_ip(address[0]):
                refused += 1
                continue
            if fam == socket.AF_INET6 and len(address) >= 4 and address[3]:
                continue  # a scoped (link-local) v6 address: not reachable by name from here anyway
            out.append(ResolveResult(hostname=host, host=address[0], port=address[1], family=fam, proto=proto,
                                     flags=_NUMERIC))
        if not out:
            if refused:
                raise BlockedAddress(f"{host} resolves only to link-local or metadata addresses")
            raise socket.gaierror(socket.EAI_NONAME, f"no usable address for {host}")
        return out

    def _settle(self, key: tuple[str, int, int], fut: asyncio.Future[list[ResolveResult]],
                result: list[ResolveResult] | None, error: BaseException | None) -> None:
        self._pending.pop(key, None)
        loop = fut.get_loop()
        answer: Any = result if error is None else error
        ttl = self.ttl_s if error is None else self.negative_ttl_s
        if isinstance(error, socket.gaierror) and error.errno == socket.EAI_AGAIN:
            ttl = min(ttl, TRANSIENT_TTL_S)  # "try again": a retry in this run should really ask again
        self._cache[key] = (loop.time() + ttl, answer)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        if fut.done():
            return
        if error is None:
            fut.set_result(answer)
        else:
            fut.set_exception(error)
            fut.exception()  # retrieved: with every waiter gone, asyncio must not log it as never seen

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


def _fresh(exc: BaseException) -> BaseException:
    try:
        return type(exc)(*exc.args)
    except Exception:  # an exception type with an unusual constructor
        return exc

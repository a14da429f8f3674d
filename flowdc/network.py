"""How a session reaches the network: proxies, TLS trust, the resolver and the address rules.

`make_connector` builds the one connector every command's session uses (fetch.make_session calls
it). The connector decides each request's proxy, hop by hop (so a redirect to a NO_PROXY host goes
direct and back), and refuses link-local and metadata hosts before it connects; the resolver
refuses what names resolve to. `ProxyWatch` stops a run whose proxy refuses or cannot be reached
for its first requests, instead of failing every row.
"""

from __future__ import annotations

import os
import ssl
import sys
from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.client_reqrep import ClientRequest
from yarl import URL

from flowdc.addresses import BlockedAddress, blocked_name
from flowdc.errors import ConfigError, ProxyError
from flowdc.proxies import Proxy, ProxyRoutes
from flowdc.resolver import DEFAULT_THREADS, PooledResolver

if TYPE_CHECKING:
    from aiohttp.client_proto import ResponseHandler
    from aiohttp.connector import Connection
    from aiohttp.tracing import Trace

FIRST_REQUESTS = 20  # a proxy refusing this many requests in a row before any got through stops the run
MAX_REMEMBERED_HOSTS = 100_000
PROXY_REFUSALS = frozenset({"proxy_refused", "proxy_unreachable"})
INSECURE_WARNING = ("--insecure: TLS certificates are not checked; anyone between here and a host can read "
                    "and change what is downloaded")


# What aiohttp's default context was built from (OpenSSL reads these when a context is made).
_TRUST_AT_IMPORT = (os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


def ssl_context(ca_bundle: str | None, insecure: bool) -> ssl.SSLContext | bool:
    """The TLS trust of every request: the system's (SSL_CERT_FILE / SSL_CERT_DIR honoured by
    OpenSSL), plus the site's CA bundle when given; False (no checks) with --insecure."""
    if insecure:
        return False
    env = (os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    if ca_bundle is None and env == _TRUST_AT_IMPORT:
        return True  # aiohttp's default context: the same trust, built at its import (no second 50-ms build)
    return _trust(ca_bundle, *env)


@lru_cache(maxsize=8)
def _trust(ca_bundle: str | None, cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    # One context per trust setting and process (never changed once built): building one reads the
    # system's CAs, 50 ms. The environment is part of the key: OpenSSL reads it at build time.
    ctx = ssl.create_default_context()
    if ca_bundle:
        try:
            ctx.load_verify_locations(cafile=ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"--ca_bundle {ca_bundle}: not a readable PEM file of certificates ({exc})") from None
    return ctx


class ProxyWatch:
    """Counts the run's first proxied requests: `FIRST_REQUESTS` refusals in a row stop the run.

    Once one request went through the proxy, the watch is settled for good: a proxy that worked
    and fails later is a per-row failure like any other.
    """

    def __init__(self, routes: ProxyRoutes) -> None:
        self.routes = routes
        self.settled = not routes.active
        self.refusals = 0

    def note(self, url: str, reason: str | None, status: int | None = None) -> None:
        if self.settled:
            return
        if reason in PROXY_REFUSALS:
            self.refusals += 1
            if self.refusals >= FIRST_REQUESTS:
                self.settled = True  # raised once, by the request that reached the count
                raise ProxyError(self._message(reason, status))
            return
        try:
            parts = urlsplit(url)
            proxied = self.routes.proxy_for(parts.scheme, parts.hostname or "", parts.port) is not None
        except ValueError:
            return
        if proxied:
            self.settled = True

    def _message(self, reason: str | None, status: int | None) -> str:
        proxies = sorted({p.display for p in (self.routes.http, self.routes.https) if p is not None})
        what = (f"refused them (HTTP {status})" if reason == "proxy_refused" and status
                else "refused them" if reason == "proxy_refused" else "could not be reached")
        return (f"the proxy {' / '.join(proxies)} {what} for the first {FIRST_REQUESTS} requests; nothing was "
                "fetched through it. Check --proxy (or HTTP_PROXY/HTTPS_PROXY), its credentials and NO_PROXY")


class GuardedConnector(aiohttp.TCPConnector):
    """A TCPConnector that refuses blocked hosts before it opens a connection to them.

    Checked where a connection is opened: a pooled connection was checked when it was opened (the
    pool's key holds the host), so a request that reuses one costs no check.
    """

    watch: ProxyWatch | None = None  # no proxies: nothing to watch

    def __init__(self, *, refuse_blocked: bool, resolver: PooledResolver, **kwargs: Any) -> None:
        super().__init__(resolver=resolver, **kwargs)
        self.refuse_blocked = refuse_blocked
        self.dns = resolver
        self._blocked: dict[str, bool] = {}  # host -> refused: parsed once per host, not per request

    async def close(self, **kwargs: Any) -> None:
        try:
            await super().close(**kwargs)
        finally:
            await self.dns.close()  # aiohttp closes only the resolvers it made itself

    async def _create_connection(self, req: ClientRequest, traces: list[Trace],
                                 timeout: aiohttp.ClientTimeout) -> ResponseHandler:
        host = req.url.raw_host or ""
        if self.refuse_blocked and self._is_blocked(host):
            raise aiohttp.ClientConnectorDNSError(req.connection_key, BlockedAddress(f"{host} is refused"))
        return await super()._create_connection(req, traces, timeout)

    def _is_blocked(self, host: str) -> bool:
        blocked = self._blocked.get(host)
        if blocked is None:
            if len(self._blocked) >= MAX_REMEMBERED_HOSTS:
                self._blocked.clear()
            blocked = self._blocked[host] = blocked_name(host)
        return blocked


class RoutingConnector(GuardedConnector):
    """A GuardedConnector that also picks each hop's proxy: for runs with proxies.

    `connect` runs once per request and once per redirect hop, pooled connection or not, so the
    proxy rules hold for every hop. (The session's own proxy lookup, trust_env, costs a thread hop
    per request and has no per-run override.)
    """

    def __init__(self, routes: ProxyRoutes, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.routes = routes
        self.watch = ProxyWatch(routes)
        self._proxy_args: dict[Proxy, tuple[URL, aiohttp.BasicAuth | None]] = {}

    async def connect(self, req: ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout) -> Connection:
        url = req.url
        proxy = self.routes.proxy_for(url.scheme, url.raw_host or "", url.port)
        if proxy is not None:
            req.update_proxy(*self._args_of(proxy), None)
        elif req.proxy is not None:
            req.update_proxy(None, None, None)
        try:
            return await super().connect(req, traces, timeout)
        except aiohttp.ClientConnectorDNSError as exc:
            if proxy is not None and req.proxy is not None and exc.host == req.proxy.raw_host:
                # The proxy's own name did not resolve: the proxy is unreachable, the origin is not to blame.
                raise aiohttp.ClientProxyConnectionError(req.connection_key, exc.os_error) from exc
            raise

    def _args_of(self, proxy: Proxy) -> tuple[URL, aiohttp.BasicAuth | None]:
        args = self._proxy_args.get(proxy)
        if args is None:
            auth = aiohttp.BasicAuth(proxy.user, proxy.password or "") if proxy.user is not None else None
            args = self._proxy_args[proxy] = (URL(proxy.url), auth)
        return args


def make_connector(global_limit: int, net: Any = None, env: Mapping[str, str] | None = None) -> GuardedConnector:
    """The connector of a run. `net` is a config with the network options (config.NetworkOptions);
    None means the defaults: the environment's proxies, the system's CAs, the address rules on."""
    routes = ProxyRoutes.from_settings(getattr(net, "proxy", None), os.environ if env is None else env)
    insecure = bool(getattr(net, "insecure", False))
    if insecure:
        print(f"flowdc: warning: {INSECURE_WARNING}", file=sys.stderr)
    refuse = bool(getattr(net, "block_link_local", True))
    resolver = PooledResolver(getattr(net, "dns_threads", DEFAULT_THREADS), refuse_blocked=refuse)
    # The resolver caches (bounded, with negative answers); aiohttp's own cache would be a second, unbounded one.
    options: dict[str, Any] = dict(
        refuse_blocked=refuse, resolver=resolver, use_dns_cache=False,
        ssl=ssl_context(getattr(net, "ca_bundle", None), insecure),
        limit=global_limit + 16, limit_per_host=0, enable_cleanup_closed=True,
    )
    # Without proxies no request needs a per-hop look: aiohttp's own connect path, one coroutine
    # frame less per request.
    return RoutingConnector(routes, **options) if routes.active else GuardedConnector(**options)


def network_summary(net: Any, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What the overview records about the network: proxies without passwords, TLS trust, resolver."""
    routes = ProxyRoutes.from_settings(getattr(net, "proxy", None), os.environ if env is None else env)
    return {
        "proxy": routes.summary(),
        "ca_bundle": getattr(net, "ca_bundle", None),
        "ssl_cert_file": (os.environ if env is None else env).get("SSL_CERT_FILE"),
        "insecure": bool(getattr(net, "insecure", False)),
        "block_link_local": bool(getattr(net, "block_link_local", True)),
        "resolver": f"system, {getattr(net, 'dns_threads', DEFAULT_THREADS)} threads",
    }


def watch_of(session: aiohttp.ClientSession) -> ProxyWatch | None:
    return getattr(session.connector, "watch", None)

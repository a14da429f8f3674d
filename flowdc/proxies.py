"""Which proxy a request goes through: `--proxy`, or HTTP_PROXY / HTTPS_PROXY, minus NO_PROXY.

Pure: the environment is passed in as a mapping, nothing is sent. The NO_PROXY rules are the
usual ones (curl, requests, Go): a comma-separated list of host names, domain suffixes (`.example.org`
or `example.org` both match `img.example.org`), IP addresses and CIDR blocks, each with an optional
`:port`; `*` alone bypasses every proxy. Names are compared case-insensitively. Loopback gets no
special case: `localhost` and 127.0.0.1 go through the proxy unless NO_PROXY names them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from flowdc.errors import ConfigError
from flowdc.urls import MASK, redact_url

NO_PROXY_WORDS = frozenset({"none", "direct", "off"})  # `--proxy none`: ignore the environment's proxies
PROXY_SCHEMES = frozenset({"http", "https"})  # what aiohttp can speak to a proxy
MAX_CACHED_ROUTES = 100_000

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Proxy:
    """One proxy: its URL without credentials, and the credentials apart (sent as Proxy-Authorization)."""

    url: str
    user: str | None = None
    password: str | None = None

    @property
    def display(self) -> str:
        """The proxy as it may be written or logged: the password is never shown."""
        if self.user is None:
            return self.url
        scheme, _, rest = self.url.partition("://")
        return f"{scheme}://{MASK}@{rest}"  # as flowdc.urls.redact_url shows any URL's userinfo


def parse_proxy(value: str, source: str) -> Proxy:
    """A proxy URL as users write it (`host:port` means http://host:port); ConfigError when unusable."""
    text = value.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ConfigError(f"{source}: not a proxy URL: {redact_url(value)}") from None
    scheme = parts.scheme.lower()
    if scheme not in PROXY_SCHEMES:
        raise ConfigError(f"{source}: {scheme}:// proxies are not supported, only http:// (and https://)")
    host = parts.hostname
    if not host:
        raise ConfigError(f"{source}: the proxy URL names no host: {redact_url(value)}")
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return Proxy(f"{scheme}://{netloc}", user, password)


@dataclass(frozen=True, slots=True)
class _Exclusion:
    domain: str | None  # a name or domain suffix, lower-case, no leading dot
    network: IPNetwork | None  # or an address block
    port: int | None  # only this port, when given


def parse_no_proxy(value: str) -> tuple[bool, tuple[_Exclusion, ...]]:
    """(everything bypasses, exclusions) from a NO_PROXY value; entries that parse to nothing are skipped."""
    out: list[_Exclusion] = []
    for raw in value.replace(" ", ",").split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True, ()
        host, port = _split_port(entry)
        try:
            out.append(_Exclusion(None, ipaddress.ip_network(host, strict=False), port))
            continue
        except ValueError:
            pass
        host = host.removeprefix("*").lstrip(".").rstrip(".")
        if host:
            out.append(_Exclusion(host, None, port))
    return False, tuple(out)


def _split_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):  # [v6]:port or [v6]
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return host, int(port) if port.isdigit() else None
    if entry.count(":") == 1:  # name:port or v4:port (a bare v6 address has several colons)
        host, _, port = entry.partition(":")
        return host, int(port) if port.isdigit() else None
    return entry, None


class ProxyRoutes:
    """Answers `proxy_for(scheme, host, port)` for every request, cheaply: answers are cached per origin."""

    def __init__(self, http: Proxy | None, https: Proxy | None, no_proxy: str = "") -> None:
        self.http = http
        self.https = https
        self.no_proxy = no_proxy
        self.bypass_all, self._exclusions = parse_no_proxy(no_proxy)
        self.active = (http is not None or https is not None) and not self.bypass_all
        self._cache: dict[tuple[str, str, int | None], Proxy | None] = {}

    @classmethod
    def from_settings(cls, option: str | None, env: Mapping[str, str]) -> ProxyRoutes:
        """`--proxy` when given (for both schemes), else the environment; NO_PROXY applies to both."""
        no_proxy = _env(env, "no_proxy") or ""
        if option is not None and option.strip():
            if option.strip().lower() in NO_PROXY_WORDS:
                return cls(None, None, no_proxy)
            proxy = parse_proxy(option, "--proxy")
            return cls(proxy, proxy, no_proxy)
        fallback = _env(env, "all_proxy")
        # Under CGI, HTTP_PROXY can be set by a client's `Proxy:` header (httpoxy): only the lower-case one counts.
        http = env.get("http_proxy") if "REQUEST_METHOD" in env else _env(env, "http_proxy")
        https = _env(env, "https_proxy")
        return cls(
            _maybe_proxy(http or fallback, "HTTP_PROXY"),
            _maybe_proxy(https or fallback, "HTTPS_PROXY"),
            no_proxy,
        )

    def proxy_for(self, scheme: str, host: str, port: int | None) -> Proxy | None:
        if not self.active:
            return None
        key = (scheme, host, port)
        try:
            return self._cache[key]
        except KeyError:
            pass
        proxy = None if self.bypassed(host, port) else (self.https if scheme == "https" else self.http)
        if len(self._cache) >= MAX_CACHED_ROUTES:
            self._cache.clear()
        self._cache[key] = proxy
        return proxy

    def bypassed(self, host: str, port: int | None) -> bool:
        """Whether NO_PROXY sends this origin around the proxy."""
        if self.bypass_all:
            return True
        name = host.lower().strip("[]").rstrip(".")
        try:
            address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(name)
        except ValueError:
            address = None
        for ex in self._exclusions:
            if ex.port is not None and ex.port != port:
                continue
            if ex.network is not None:
                if address is not None and address in ex.network:
                    return True
            elif ex.domain is not None and (name == ex.domain or name.endswith("." + ex.domain)):
                return True
        return False

    def summary(self) -> dict[str, str | None]:
        """What the overview records: proxies without passwords."""
        return {"http": self.http.display if self.http else None,
                "https": self.https.display if self.https else None,
                "no_proxy": self.no_proxy or None}


def _env(env: Mapping[str, str], name: str) -> str | None:
    """Lower-case first, as curl and urllib read them; empty counts as unset."""
    return env.get(name) or env.get(name.upper()) or None


def _maybe_proxy(value: str | None, source: str) -> Proxy | None:
    return parse_proxy(value, source) if value else None

"""Proxy choice (pure): --proxy over the environment, the usual NO_PROXY rules, credentials kept out of sight."""

from __future__ import annotations

from typing import Any

import pytest

from flowdc.addresses import blocked_ip, blocked_name
from flowdc.config import DownloadConfig, public_dict
from flowdc.errors import ConfigError, ProxyError
from flowdc.network import FIRST_REQUESTS, ProxyWatch
from flowdc.proxies import ProxyRoutes, parse_proxy

ENV = {"HTTP_PROXY": "http://plain:3128", "HTTPS_PROXY": "http://tls:3129"}


def route(routes: ProxyRoutes, url_scheme: str, host: str, port: int) -> str | None:
    proxy = routes.proxy_for(url_scheme, host, port)
    return None if proxy is None else proxy.url


def test_environment_proxies_per_scheme_lower_case_first() -> None:
    routes = ProxyRoutes.from_settings(None, {**ENV, "https_proxy": "lower:8080"})
    assert route(routes, "http", "example.org", 80) == "http://plain:3128"
    assert route(routes, "https", "example.org", 443) == "http://lower:8080"
    assert not ProxyRoutes.from_settings(None, {}).active
    # ALL_PROXY fills in for a scheme without its own.
    routes = ProxyRoutes.from_settings(None, {"ALL_PROXY": "http://all:1"})
    assert route(routes, "https", "a.org", 443) == "http://all:1"


def test_option_overrides_the_environment_and_none_ignores_it() -> None:
    routes = ProxyRoutes.from_settings("http://opt:9", ENV)
    assert route(routes, "http", "a.org", 80) == route(routes, "https", "a.org", 443) == "http://opt:9"
    assert not ProxyRoutes.from_settings("none", ENV).active


@pytest.mark.parametrize(("no_proxy", "host", "port", "bypassed"), [
    ("example.org", "example.org", 443, True),
    ("example.org", "img.example.org", 443, True),
    (".example.org", "img.example.org", 443, True),
    ("*.example.org", "img.example.org", 443, True),
    ("example.org", "badexample.org", 443, False),
    ("EXAMPLE.org", "Img.Example.ORG", 443, True),
    ("example.org:8443", "example.org", 443, False),
    ("example.org:8443", "example.org", 8443, True),
    ("10.0.0.0/8", "10.2.3.4", 80, True),
    ("10.0.0.0/8", "11.2.3.4", 80, False),
    ("192.168.1.5", "192.168.1.5", 80, True),
    ("::1", "[::1]", 80, True),
    ("[::1]:8080", "::1", 8080, True),
    ("fd00::/8", "fd12::1", 80, True),
    ("*", "anything.at.all", 80, True),
    # No special case for loopback: only what NO_PROXY names goes around the proxy.
    ("", "localhost", 80, False),
    ("", "127.0.0.1", 80, False),
    ("example.org, ,localhost", "localhost", 80, True),
])
def test_no_proxy_rules(no_proxy: str, host: str, port: int, bypassed: bool) -> None:
    routes = ProxyRoutes.from_settings(None, {**ENV, "NO_PROXY": no_proxy})
    assert (route(routes, "https", host, port) is None) is bypassed
    # NO_PROXY applies to --proxy too.
    assert (route(ProxyRoutes.from_settings("http://opt:1", {"no_proxy": no_proxy}), "http", host, port)
            is None) is bypassed


def test_credentials_are_parsed_apart_and_never_displayed() -> None:
    proxy = parse_proxy("http://al%40ice:s3cr%3At@proxy.site:3128", "--proxy")
    assert (proxy.url, proxy.user, proxy.password) == ("http://proxy.site:3128", "al@ice", "s3cr:t")
    assert "s3cr" not in proxy.display and "proxy.site:3128" in proxy.display
    assert parse_proxy("proxy.site:3128", "HTTP_PROXY").url == "http://proxy.site:3128"
    routes = ProxyRoutes.from_settings("http://u:topsecret@p:1", {})
    assert "topsecret" not in str(routes.summary())
    cfg = DownloadConfig(input="m.csv", output="out", proxy="http://u:topsecret@p:1")
    assert "topsecret" not in str(public_dict(cfg))


@pytest.mark.parametrize("value", ["socks5://p:1080", "http://", "http://p:notaport"])
def test_unusable_proxies_are_config_errors(value: str) -> None:
    with pytest.raises(ConfigError):
        ProxyRoutes.from_settings(value, {})
    with pytest.raises(ConfigError):
        ProxyRoutes.from_settings(None, {"HTTPS_PROXY": value})


def test_watch_stops_after_the_first_refusals_in_a_row() -> None:
    watch = ProxyWatch(ProxyRoutes.from_settings("http://u:pw12345@p:1", {}))
    for _ in range(FIRST_REQUESTS - 1):
        watch.note("https://a.org/x", "proxy_refused", 407)
    with pytest.raises(ProxyError) as err:
        watch.note("https://a.org/x", "proxy_refused", 407)
    assert "407" in str(err.value) and "pw12345" not in str(err.value)


def test_watch_settles_once_a_request_went_through() -> None:
    watch = ProxyWatch(ProxyRoutes.from_settings("http://p:1", {"NO_PROXY": "direct.org"}))
    watch.note("https://direct.org/x", None)  # not proxied: says nothing about the proxy
    assert not watch.settled
    watch.note("https://a.org/x", "http_404")  # the origin answered through the proxy
    assert watch.settled
    for _ in range(2 * FIRST_REQUESTS):
        watch.note("https://a.org/x", "proxy_unreachable")  # later failures are per-row ones


@pytest.mark.parametrize(("host", "blocked"), [
    ("169.254.169.254", True), ("169.254.1.1", True), ("[fe80::1]", True), ("fe80::1%eth0", True),
    ("::ffff:169.254.169.254", True), ("fd00:ec2::254", True), ("metadata.google.internal", True),
    ("METADATA.GOOGLE.INTERNAL.", True), ("127.0.0.1", False), ("10.1.2.3", False), ("192.168.0.1", False),
    ("::1", False), ("example.org", False), ("fd12::1", False),
])
def test_address_rules(host: str, blocked: bool) -> None:
    assert blocked_name(host) is blocked
    assert blocked_ip(host) is (blocked and "metadata" not in host.lower())  # names are not addresses


def test_network_options_are_checked_up_front(tmp_path: Any) -> None:
    base = {"input": "m.csv", "output": "out"}
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not a certificate")
    for bad, message in [({"ca_bundle": str(tmp_path / "missing.pem")}, "no such file"),
                         ({"ca_bundle": str(bundle), "insecure": True}, "not both"),
                         ({"dns_threads": 0}, "dns_threads"),
                         ({"proxy": "socks5://p:1080"}, "not supported"),
                         ({"ca_bundle": str(bundle)}, "PEM")]:  # there, but holds no certificate
        with pytest.raises(ConfigError, match=message):
            DownloadConfig(**base, **bad).check()

"""Cluster networks: a real proxy (tinyproxy), a private CA, IPv6 hosts, DNS failures, refused addresses.

All servers are on loopback: fake hosts on 127.0.0.x and ::1, tinyproxy on 127.0.0.1. Names that
are not addresses are answered by a stub resolver put where flowdc calls the system resolver
(flowdc.resolver.getaddrinfo); no lookup leaves the machine. Link-local and metadata addresses
appear only as answers of that stub or in URLs, and the tests check that nothing connects to them.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from flowdc import resolver as resolver_module
from flowdc.testing.fakehosts import FakeHostFarm, HostSpec, write_manifest
from tests.integration.conftest import download, latest, run_flowdc, visible_files
from tests.network_helpers import TestCA, make_ca, run_tinyproxy

Farm = Callable[[Sequence[HostSpec]], FakeHostFarm]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return make_ca(tmp_path_factory.mktemp("ca"))


def tls(spec: HostSpec, ca: TestCA) -> HostSpec:
    spec.tls_cert, spec.tls_key = str(ca.cert_pem), str(ca.key_pem)
    return spec


def manifest(tmp_path: Path, farm: FakeHostFarm, per_host: int, name: str = "m.parquet") -> Path:
    urls = [farm.url(h, f"/h{h}/img{i}.png") for h in range(len(farm.hosts)) for i in range(per_host)]
    return write_manifest(tmp_path / name, urls)


def proxied_requests(log: str) -> list[str]:
    """The request lines tinyproxy logged: `CONNECT host:port` or `GET http://...`."""
    marker = "Request (file descriptor"
    return [line.split("): ", 1)[1] for line in log.splitlines() if marker in line]


# -- proxies -------------------------------------------------------------------------------------
def test_http_and_https_origins_through_a_real_proxy_with_no_proxy_exclusions(
        tmp_path: Path, farm_factory: Farm, ca: TestCA, monkeypatch: pytest.MonkeyPatch) -> None:
    farm = farm_factory([HostSpec("127.0.0.2"), tls(HostSpec("127.0.0.3"), ca), HostSpec("127.0.0.4")])
    excluded = farm.hosts[2].netloc
    with run_tinyproxy(tmp_path / "proxy") as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", f"example.org,{excluded}")
        overview = download(manifest(tmp_path, farm, 8), tmp_path / "out", ca_bundle=str(ca.ca_pem))
        requests = proxied_requests(proxy.log_text())
    assert overview["totals"]["ok"] == 24, overview["errors"]
    plain, secure = farm.hosts[0].netloc, farm.hosts[1].netloc
    assert sum(r.startswith(f"GET http://{plain}/") for r in requests) == 8  # absolute-form through the proxy
    assert any(r.startswith(f"CONNECT {secure} ") for r in requests)  # a tunnel for https
    assert not any(excluded in r for r in requests)  # NO_PROXY: straight to the host
    assert farm.hosts[2].stats["requests"] == 8
    # PAARC still judges each origin host, not the one proxy.
    assert {plain, secure, excluded} <= set(overview["hosts"])
    assert overview["network"]["proxy"]["https"] == proxy.url


def test_proxy_credentials_are_sent_and_written_nowhere(tmp_path: Path, farm_factory: Farm, ca: TestCA) -> None:
    secret = "s3cretPr0xyPw"
    farm = farm_factory([HostSpec("127.0.0.2"), tls(HostSpec("127.0.0.3"), ca)])
    src = manifest(tmp_path, farm, 5)
    out, telemetry = tmp_path / "out", tmp_path / "telemetry.jsonl"
    with run_tinyproxy(tmp_path / "proxy", basic_auth=("flowuser", secret)) as proxy:
        proxy_url = proxy.url.replace("http://", f"http://flowuser:{secret}@")
        done = run_flowdc("download", "--input", str(src), "--output", str(out), "--proxy", proxy_url,
                          "--ca_bundle", str(ca.ca_pem), "--telemetry", str(telemetry), "--quiet",
                          "--no_create_tar", "--timeout", "5")
        log = proxy.log_text()
    assert done.returncode == 0, done.stderr
    assert [r["status"] for r in latest(out)] == ["ok"] * 10
    assert len(proxied_requests(log)) >= 6  # both origins went through the proxy that demands the password
    overview = json.loads((out / "overview.json").read_text())
    assert overview["config"]["proxy"] == proxy.url.replace("http://", "http://***@")
    for path in [*visible_files(out), telemetry]:
        assert secret.encode() not in path.read_bytes(), path
    ledger_text = json.dumps(latest(out), default=str)
    assert secret not in ledger_text and secret not in done.stdout + done.stderr


@pytest.mark.parametrize(("password", "origins", "status"), [
    (None, ("http", "https"), "407"),  # no credentials: 407 for both kinds of origin
    ("wrong-password", ("https",), "401"),  # tinyproxy answers wrong ones with 401: told apart on a CONNECT only
])
def test_a_refusing_proxy_stops_the_run_with_one_line(tmp_path: Path, farm_factory: Farm, ca: TestCA,
                                                      password: str | None, origins: tuple[str, ...],
                                                      status: str) -> None:
    specs = {"http": HostSpec("127.0.0.2"), "https": tls(HostSpec("127.0.0.3"), ca)}
    farm = farm_factory([specs[o] for o in origins])
    src = manifest(tmp_path, farm, 30)
    with run_tinyproxy(tmp_path / "proxy", basic_auth=("flowuser", "right-password")) as proxy:
        proxy_url = proxy.url.replace("http://", f"http://flowuser:{password}@") if password else proxy.url
        done = run_flowdc("download", "--input", str(src), "--output", str(tmp_path / "out"), "--proxy", proxy_url,
                          "--ca_bundle", str(ca.ca_pem), "--quiet", "--no_create_tar")
    assert done.returncode == 1, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flowdc: error: the proxy"), done.stderr
    assert f"HTTP {status}" in lines[0] and "wrong-password" not in lines[0]
    assert farm.totals()["requests"] == 0
    # Nothing was recorded as failed: a rerun with the right credentials fetches every row.
    assert not [r for r in latest(tmp_path / "out") if r["status"] == "failed"]


def test_a_failed_connect_is_about_the_proxy_not_the_host(tmp_path: Path) -> None:
    """tinyproxy cannot reach the origin and answers the CONNECT with a 5xx: the row fails as
    proxy_http_<status> with a signal that never reaches the host's controller (Signal.NOT_SENT)."""
    import asyncio

    from flowdc.config import DownloadConfig
    from flowdc.fetch import FetchSettings, fetch_one, make_session
    from flowdc.signals import Signal

    with socket.socket() as closed, run_tinyproxy(tmp_path / "proxy") as proxy:
        closed.bind(("127.0.0.5", 0))  # bound, never listening: the proxy's connect is refused
        port = closed.getsockname()[1]
        cfg = DownloadConfig(input="m.parquet", output="out", proxy=proxy.url)

        async def fetch() -> tuple[Any, ...]:
            async with make_session(4, net=cfg) as session:
                settings = FetchSettings.of(DownloadConfig(timeout=5))
                secure = await fetch_one(session, f"https://127.0.0.5:{port}/x.png", settings)
                plain = await fetch_one(session, f"http://127.0.0.5:{port}/x.png", settings)
                return secure, plain

        secure, plain = asyncio.run(fetch())
    assert secure.signal is Signal.NOT_SENT and secure.reason.startswith("proxy_http_5"), secure
    assert secure.retryable
    # For an http origin the proxy relays its answer, which cannot be told apart from the host's own.
    assert plain.signal is Signal.SERVER_ERROR and plain.reason.startswith("http_5"), plain


def test_an_unreachable_proxy_stops_the_run_with_one_line(tmp_path: Path, farm_factory: Farm) -> None:
    farm = farm_factory([HostSpec("127.0.0.2")])
    src = manifest(tmp_path, farm, 25)
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        done = run_flowdc("download", "--input", str(src), "--output", str(tmp_path / "out"),
                          "--proxy", f"http://127.0.0.1:{port}", "--quiet", "--no_create_tar")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "could not be reached" in lines[0], done.stderr
    assert farm.totals()["requests"] == 0


def test_size_asks_through_the_same_proxy(tmp_path: Path, farm_factory: Farm, ca: TestCA) -> None:
    """`flowdc size` builds its session the same way: proxied HEADs, a tunnel for https, NO_PROXY."""
    from flowdc.config import SizeConfig
    from flowdc.size import run_size

    farm = farm_factory([HostSpec("127.0.0.2", image_bytes=1000), tls(HostSpec("127.0.0.3", image_bytes=1000), ca)])
    src = manifest(tmp_path, farm, 3)
    with run_tinyproxy(tmp_path / "proxy") as proxy:
        report = run_size(SizeConfig(input=str(src), proxy=proxy.url, ca_bundle=str(ca.ca_pem), quiet=True,
                                     report=str(tmp_path / "size.json")))
        requests = proxied_requests(proxy.log_text())
    assert report["resolved"] == 6, report
    assert sum(r.startswith("HEAD http://127.0.0.2:") for r in requests) == 3
    assert any(r.startswith("CONNECT 127.0.0.3:") for r in requests)


# -- TLS -----------------------------------------------------------------------------------------
def test_a_private_ca_is_trusted_with_ca_bundle_only(tmp_path: Path, farm_factory: Farm, ca: TestCA,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    farm = farm_factory([tls(HostSpec("127.0.0.2"), ca), tls(HostSpec("127.0.0.3"), ca)])
    src = manifest(tmp_path, farm, 6)
    refused = download(src, tmp_path / "refused")
    rows = latest(tmp_path / "refused")
    assert [(r["status"], r["reason"], r["attempts"], r["retryable"]) for r in rows] == \
        [("failed", "certificate_error", 1, True)] * 12  # not retried now; a rerun with the CA tries again
    assert refused["errors"] == {"certificate_error": 12}
    assert farm.totals()["requests"] == 0  # no HTTP request got past the handshake

    trusted = download(src, tmp_path / "refused", ca_bundle=str(ca.ca_pem))  # the same output: a rerun
    assert trusted["totals"] == {"rows": 12, "ok": 12, "failed": 0, "skipped": 0}

    monkeypatch.setenv("SSL_CERT_FILE", str(ca.ca_pem))  # as before: OpenSSL's own variable works too
    assert download(src, tmp_path / "env")["totals"]["ok"] == 12


def test_insecure_warns_once_and_says_so_in_the_overview(tmp_path: Path, farm_factory: Farm, ca: TestCA) -> None:
    farm = farm_factory([tls(HostSpec("127.0.0.2"), ca)])
    src = manifest(tmp_path, farm, 4)
    done = run_flowdc("download", "--input", str(src), "--output", str(tmp_path / "out"), "--insecure",
                      "--quiet", "--no_create_tar")
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("--insecure") == 1
    overview = json.loads((tmp_path / "out" / "overview.json").read_text())
    assert overview["totals"]["ok"] == 4
    assert overview["network"]["insecure"] is True and "not checked" in overview["warnings"][0]


# -- IPv6 ----------------------------------------------------------------------------------------
def test_hosts_on_ipv6_loopback(tmp_path: Path, farm_factory: Farm, ca: TestCA) -> None:
    farm = farm_factory([HostSpec("::1"), tls(HostSpec("::1"), ca)])
    overview = download(manifest(tmp_path, farm, 5), tmp_path / "out", ca_bundle=str(ca.ca_pem))
    assert overview["totals"]["ok"] == 10, overview["errors"]
    assert {h.netloc for h in farm.hosts} == set(overview["hosts"])
    assert all(h.startswith("[::1]:") for h in overview["hosts"])


# -- DNS and the address rules (issue 13.7) ------------------------------------------------------
class StubResolver:
    """Names -> addresses, as a DNS server would answer; anything else does not exist. Records names."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.asked: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, host: str, port: int, family: int = 0, type: int = 0, proto: int = 0,
                 flags: int = 0) -> list[tuple[Any, ...]]:
        with self.lock:
            self.asked.append(host)
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        address = self.answers[host]
        fam = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [(fam, socket.SOCK_STREAM, 6, "", (address, port) if fam == socket.AF_INET else (address, port, 0, 0))]


@pytest.fixture
def stub_dns(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, str]], StubResolver]:
    def install(answers: dict[str, str]) -> StubResolver:
        stub = StubResolver(answers)
        monkeypatch.setattr(resolver_module, "getaddrinfo", stub)
        return stub

    return install


def test_a_failing_name_is_dns_error_for_its_rows_only(tmp_path: Path, farm_factory: Farm,
                                                       stub_dns: Callable[[dict[str, str]], StubResolver]) -> None:
    farm = farm_factory([HostSpec("127.0.0.2"), HostSpec("127.0.0.3")])
    stub = stub_dns({"img-a.test": "127.0.0.2", "img-b.test": "127.0.0.3"})
    ports = [h.port for h in farm.hosts]
    urls = [f"http://img-a.test:{ports[0]}/a{i}.png" for i in range(10)]
    urls += [f"http://gone.invalid:{ports[0]}/g{i}.png" for i in range(10)]
    urls += [f"http://img-b.test:{ports[1]}/b{i}.png" for i in range(10)]
    overview = download(write_manifest(tmp_path / "m.parquet", urls), tmp_path / "out")
    rows = latest(tmp_path / "out")
    assert [r["status"] for r in rows[:10] + rows[20:]] == ["ok"] * 20
    assert {(r["status"], r["reason"], r["retryable"]) for r in rows[10:20]} == {("failed", "dns_error", True)}
    assert all(r["attempts"] == 1 for r in rows[10:20])  # no such name: not asked again in this run
    assert overview["errors"] == {"dns_error": 10}
    assert stub.asked.count("gone.invalid") == 1  # the failure is cached, not asked per row
    assert stub.asked.count("img-a.test") == 1


@pytest.fixture
def redirector() -> Iterator[Callable[[str], str]]:
    """A host on 127.0.0.6 whose /to?u=URL answers 302 to URL; nothing else."""
    import asyncio

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def handle(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["u"])

    async def start() -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/to", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.6", 0).start()
        return runner

    runner = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    port = runner.addresses[0][1]
    from urllib.parse import quote

    yield lambda target: f"http://127.0.0.6:{port}/to?u={quote(target, safe='')}"
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def test_link_local_and_metadata_addresses_are_refused_per_row(
        tmp_path: Path, farm_factory: Farm, stub_dns: Callable[[dict[str, str]], StubResolver],
        redirector: Callable[[str], str]) -> None:
    farm = farm_factory([HostSpec("127.0.0.2"), HostSpec("127.0.0.3")])
    stub = stub_dns({"creds.test": "169.254.169.254", "v6ll.test": "fe80::1", "mirror.test": "127.0.0.3"})
    good = [farm.url(0, "/ok1.png"), f"http://mirror.test:{farm.hosts[1].port}/ok2.png"]
    refused = [
        "http://169.254.169.254/latest/meta-data/",  # a literal address: refused before any connect
        "http://[fe80::1]/x.png",
        "http://[::ffff:169.254.169.254]/x.png",
        "http://metadata.google.internal/computeMetadata/v1/",  # a metadata name: refused before a lookup
        "http://creds.test/latest/meta-data/",  # a name that resolves to the metadata address
        "http://v6ll.test/x.png",
        redirector("http://169.254.169.254/latest/meta-data/iam/"),  # a redirect hop to it
        redirector("http://creds.test/x.png"),
    ]
    overview = download(write_manifest(tmp_path / "m.parquet", good + refused), tmp_path / "out", timeout=3.0)
    rows = latest(tmp_path / "out")
    assert [r["status"] for r in rows[:2]] == ["ok", "ok"]  # loopback and LAN-style names stay allowed
    assert [(r["status"], r["reason"], r["attempts"]) for r in rows[2:]] == \
        [("failed", "blocked_address", 1)] * len(refused)
    assert overview["errors"] == {"blocked_address": len(refused)}
    assert "metadata.google.internal" not in stub.asked


def test_behind_a_proxy_only_names_are_checked(tmp_path: Path, farm_factory: Farm,
                                               stub_dns: Callable[[dict[str, str]], StubResolver]) -> None:
    farm = farm_factory([HostSpec("127.0.0.2")])
    stub = stub_dns({})  # every name the client looked up itself would fail
    urls = [farm.url(0, "/via-proxy.png"), "http://metadata.google.internal/computeMetadata/v1/",
            "http://169.254.169.254/latest/meta-data/"]
    with run_tinyproxy(tmp_path / "proxy") as proxy:
        download(write_manifest(tmp_path / "m.parquet", urls), tmp_path / "out", proxy=proxy.url)
        requests = proxied_requests(proxy.log_text())
    rows = latest(tmp_path / "out")
    assert [(r["status"], r["reason"]) for r in rows] == [("ok", None), ("failed", "blocked_address"),
                                                          ("failed", "blocked_address")]
    assert len(requests) == 1 and "via-proxy" in requests[0]  # the refused ones never reached the proxy
    assert stub.asked == []  # the proxy resolves origins; the client never learns their addresses

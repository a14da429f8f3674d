"""Fetching inside `flowdc download`: per-host limits, no head-of-line blocking, the first requests
leaving before a manifest batch is all read, retries and Retry-After, final statuses, body and type
checks, redirects, schemes, truncation.

Servers: fake hosts (flowdc.testing.fakehosts) and a status host (conftest) on 127.0.0.x.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from flowdc.config import DownloadConfig
from flowdc.download import FEED_SLICE_ROWS, DownloadJob
from flowdc.testing.fakehosts import FakeHostFarm, HostSpec
from tests.integration.conftest import (
    FAST,
    StatusHost,
    by_url,
    download,
    expected_png,
    sha256,
    visible_files,
    write_manifest,
)

FarmFactory = Callable[[Sequence[HostSpec]], FakeHostFarm]


def run(tmp_path: Path, urls: list[str], name: str = "out", **options: Any) -> dict[str, dict[str, Any]]:
    """Download `urls` into tmp_path/name; returns the ledger's final record per URL."""
    manifest = write_manifest(tmp_path / f"{name}.parquet", urls)
    overview = download(manifest, tmp_path / name, **options)
    assert overview["totals"]["rows"] == len(urls)
    return by_url(tmp_path / name)


def path_of(url: str) -> str:
    return urlsplit(url).path


def events_for(farm: FakeHostFarm, index: int, path_qs: str) -> list[tuple[float, float, int, str]]:
    return [e for e in farm.hosts[index].stats["events"] if e[3] == path_qs]


# -- politeness ---------------------------------------------------------------------------------
def test_fixed_per_host_limit_is_respected(tmp_path: Path, farm_factory: FarmFactory) -> None:
    """With PAARC disabled, no host ever sees more than C_init requests at once, and each reaches it."""
    farm = farm_factory([HostSpec(f"127.0.0.{i}", latency_s=0.03) for i in (2, 3, 4)])
    urls = [farm.url(i % 3, f"/lim/{i}.png?size=300") for i in range(90)]
    records = run(tmp_path, urls, enable_paarc=False, C_init=3, C_min=1, concurrent_downloads=64)
    assert all(r["status"] == "ok" for r in records.values())
    assert [st["max_in_system"] for st in farm.stats().values()] == [3, 3, 3]


def test_paarc_never_exceeds_c_max(tmp_path: Path, farm_factory: FarmFactory) -> None:
    """With PAARC on, a host that stays fast is pushed up but never past C_max."""
    farm = farm_factory([HostSpec("127.0.0.2", latency_s=0.02)])
    urls = [farm.url(0, f"/cmax/{i}.png?size=300") for i in range(150)]
    records = run(tmp_path, urls, enable_paarc=True, C_init=2, C_min=1, C_max=5, concurrent_downloads=64)
    assert all(r["status"] == "ok" for r in records.values())
    assert 2 <= farm.hosts[0].stats["max_in_system"] <= 5


def test_slow_host_does_not_hold_other_hosts_slots(tmp_path: Path, farm_factory: FarmFactory) -> None:
    """A slow, single-slot host at the head of the manifest takes only its own C_init slots:
    the fast hosts' rows all finish before the slow host's first row does."""
    farm = farm_factory([HostSpec("127.0.0.2", latency_s=0.8, capacity=1),
                         HostSpec("127.0.0.3", latency_s=0.005), HostSpec("127.0.0.4", latency_s=0.005)])
    slow = [farm.url(0, f"/slow/{i}.png?size=300") for i in range(4)]
    fast = [farm.url(1 + i % 2, f"/fast/{i}.png?size=300") for i in range(40)]
    records = run(tmp_path, slow + fast, enable_paarc=False, C_init=2, C_min=1, concurrent_downloads=4, timeout=10)
    assert all(r["status"] == "ok" for r in records.values())
    last_fast = max(records[u]["ts"] for u in fast)
    first_slow = min(records[u]["ts"] for u in slow)
    assert last_fast < first_slow, f"fast rows ended {last_fast - first_slow:.2f}s after the first slow row"
    assert farm.hosts[0].stats["max_in_system"] <= 2


# -- retries ------------------------------------------------------------------------------------
def test_transient_failures_are_retried(tmp_path: Path, farm_factory: FarmFactory, status_host: StatusHost) -> None:
    """429, 408, 500, 502, 503, header timeouts, connection resets and truncated bodies are retried;
    each row ends ok with the right number of attempts and the right bytes."""
    farm = farm_factory([HostSpec("127.0.0.2", stall_s=3.0), HostSpec("127.0.0.3", stall_s=3.0)])
    cases = {
        farm.url(0, "/r/429.png?fail=429x1"): 2,
        farm.url(1, "/r/503.png?fail=503x2"): 3,
        farm.url(0, "/r/500.png?fail=500x2"): 3,
        farm.url(1, "/r/reset.png?fail=resetx2"): 2,  # aiohttp resends once after a drop by itself
        farm.url(0, "/r/trunc.png?fail=truncatex1&size=30000"): 2,
        farm.url(1, "/r/stall.png?fail=stallx1"): 2,
        status_host.url(408, 1, "r408"): 2,
        status_host.url(502, 2, "r502"): 3,
    }
    records = run(tmp_path, list(cases), timeout=1.0, max_retry_attempts=3)
    for url, attempts in cases.items():
        rec = records[url]
        assert (rec["status"], rec["attempts"]) == ("ok", attempts), (url, rec["reason"])
        size = 30000 if "size=30000" in url else 4096
        assert rec["sha256"] == sha256(expected_png(path_of(url), size)), url
    assert status_host.attempts["/s/408/1/r408.png"] == 2


def test_retries_stop_at_max_retry_attempts(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """A URL that keeps failing is tried 1 + max_retry_attempts times, then failed as retryable."""
    url = two_hosts.url(0, "/r/always503.png?fail=503")
    rec = run(tmp_path, [url], max_retry_attempts=2)[url]
    assert (rec["status"], rec["reason"], rec["retryable"], rec["attempts"]) == ("failed", "http_503", True, 3)
    assert two_hosts.hosts[0].stats["attempts"]["/r/always503.png?fail=503"] == 3


def test_a_retry_after_replaces_the_backoff(tmp_path: Path, farm_factory: FarmFactory) -> None:
    """When the server names a time, that is when the URL is asked again: not the longer
    exponential backoff, which would only stretch the run's tail."""
    farm = farm_factory([HostSpec("127.0.0.2", keep_events=10)])
    path_qs = "/ra/once.png?fail=429x1&retry_after=1"
    records = run(tmp_path, [farm.url(0, path_qs)], retry_backoff_sec=10.0)
    assert all(r["status"] == "ok" for r in records.values())
    first, second = events_for(farm, 0, path_qs)
    assert 0.9 <= second[0] - first[1] <= 3.0, f"retried after {second[0] - first[1]:.2f}s"


def test_a_retry_after_of_zero_keeps_the_backoff(tmp_path: Path, farm_factory: FarmFactory) -> None:
    """`Retry-After: 0` (or a date a slow clock put in the past) names no time: the backoff holds.
    Taken as the time, it sent a URL's three attempts within 10 ms."""
    farm = farm_factory([HostSpec("127.0.0.2", keep_events=10)])
    path_qs = "/ra/zero.png?fail=503x2&retry_after=0"
    records = run(tmp_path, [farm.url(0, path_qs)], retry_backoff_sec=0.4, max_retry_attempts=3)
    assert all(r["status"] == "ok" for r in records.values())
    first, second, third = events_for(farm, 0, path_qs)
    assert second[0] - first[1] >= 0.19 and third[0] - second[1] >= 0.39, (first, second, third)


def test_retry_after_holds_the_host(tmp_path: Path, farm_factory: FarmFactory) -> None:
    """Retry-After, in seconds or as an HTTP-date, holds that host: no request reaches it before the
    time the header named, while another host keeps working."""
    farm = farm_factory([HostSpec("127.0.0.2", keep_events=100), HostSpec("127.0.0.3", keep_events=100),
                         HostSpec("127.0.0.4", keep_events=100)])
    secs = "/ra/secs.png?fail=429x1&retry_after=2"
    date = "/ra/date.png?fail=503x1&retry_after=2&retry_after_date=1"
    urls = [farm.url(0, secs), farm.url(1, date)]
    urls += [farm.url(h, f"/ra/{h}-{i}.png?size=300") for i in range(5) for h in (0, 1, 2)]
    records = run(tmp_path, urls, enable_paarc=False, C_init=1, C_min=1, retry_backoff_sec=0.05)
    assert all(r["status"] == "ok" for r in records.values())
    for index, path_qs in ((0, secs), (1, date)):
        first, second = events_for(farm, index, path_qs)
        assert first[2] in (429, 503) and second[2] == 200
        assert second[0] - first[1] >= 1.9, f"retried after {second[0] - first[1]:.2f}s"
        later = [e for e in farm.hosts[index].stats["events"] if e[3] != path_qs]
        assert all(e[0] - first[1] >= 1.9 for e in later), "the host was not held"
    free_host_done = max(e[1] for e in farm.hosts[2].stats["events"])
    assert free_host_done < events_for(farm, 0, secs)[1][0]


def test_a_host_that_answers_for_others_after_a_redirect_is_held_for_them_all(
        tmp_path: Path, farm_factory: FarmFactory) -> None:
    """Four manifest hosts redirect to one host that answers for them (a CDN). Its Retry-After held
    only the origin whose request it refused: the other three kept sending it requests during the
    hold it had named (72% of its requests in QA). Every host that leads to it is held with it."""
    farm = farm_factory([*(HostSpec(f"127.0.0.{i}", latency_s=0.02) for i in (2, 3, 4, 5)),
                         HostSpec("127.0.0.6", latency_s=0.03, keep_events=500)])
    cdn = farm.url(4, "")
    refused = "/cdn/first.png?fail=429x1&retry_after=2"
    urls = [farm.url(0, f"/o/first.png?redirect_to={quote(cdn + refused, safe='')}")]
    urls += [farm.url(i % 4, f"/o/{i}.png?redirect_to={quote(cdn + f'/cdn/{i}.png', safe='')}") for i in range(1, 60)]
    records = run(tmp_path, urls, enable_paarc=False, C_init=1, C_min=1, retry_backoff_sec=0.05)
    assert all(r["status"] == "ok" for r in records.values())
    events = farm.hosts[4].stats["events"]
    refusal_end = next(e[1] for e in events if e[2] == 429)
    # What was already on its way when the refusal came may land just after it; nothing is sent later.
    during_hold = [e for e in events if refusal_end + 0.3 < e[0] < refusal_end + 1.9]
    assert during_hold == [], f"{len(during_hold)} requests reached the host during the hold it named"


# -- final outcomes -----------------------------------------------------------------------------
def test_object_outcomes(tmp_path: Path, two_hosts: FakeHostFarm, status_host: StatusHost) -> None:
    """Final statuses are not retried; size, type, redirect and scheme rules give their reasons;
    chunked bodies work; and only ok rows leave a file."""
    f = two_hosts
    expect: dict[str, tuple[str, str | None, int]] = {  # url -> (status, reason, attempts)
        f.url(0, "/o/404.png?fail=404"): ("failed", "http_404", 1),
        status_host.url(403, 0, "o403"): ("failed", "http_403", 1),
        status_host.url(410, 0, "o410"): ("failed", "http_410", 1),
        f.url(1, "/o/big.png?size=20000"): ("failed", "too_large", 1),
        f.url(0, "/o/bigchunked.png?size=20000&nolength=1"): ("failed", "too_large", 1),
        f.url(1, "/o/small.png?size=3000"): ("ok", None, 1),
        f.url(0, "/o/chunked.png?size=4000&nolength=1"): ("ok", None, 1),
        f.url(1, "/o/page.png?ctype=text/html&size=3000"): ("failed", "content_type:text/html", 1),
        f.url(0, "/o/r3.png?redirect=3&size=3000"): ("ok", None, 1),
        f.url(1, "/o/r4.png?redirect=4&size=3000"): ("ok", None, 1),
        f.url(0, "/o/r5.png?redirect=5&size=3000"): ("failed", "too_many_redirects", 1),
        f.url(1, "/o/trunc.png?fail=truncate&size=3000"): ("failed", "truncated", 3),
        f.url(0, "/o/part.png?partial=1000&size=3000"): ("failed", "partial_content", 3),  # a 206 unasked
        f.url(1, "/o/whole206.png?partial=3000&size=3000"): ("ok", None, 1),  # a 206 of the whole body
        "ftp://127.0.0.2/a.png": ("failed", "unsupported_scheme:ftp", 0),
        "file:///etc/passwd": ("failed", "unsupported_scheme:file", 0),
        "javascript:alert(1)": ("failed", "unsupported_scheme:javascript", 0),
        "data:image/png;base64,iVBORw0KGgo=": ("failed", "unsupported_scheme:data", 0),
        "/relative/path.png": ("failed", "unsupported_scheme:none", 0),
        "http:///nohost.png": ("failed", "invalid_url", 0),
        "": ("skipped", "no_url", 0),
    }
    out = tmp_path / "out"
    records = run(tmp_path, list(expect), max_body_bytes=5000, max_redirects=4, max_retry_attempts=2)
    for url, (status, reason, attempts) in expect.items():
        rec = records[url]
        assert (rec["status"], rec["reason"], rec["attempts"]) == (status, reason, attempts), url
    assert f.hosts[0].stats["attempts"]["/o/404.png?fail=404"] == 1
    assert status_host.attempts["/s/403/0/o403.png"] == 1 and status_host.attempts["/s/410/0/o410.png"] == 1
    stored = [p for p in visible_files(out) if "_flowdc" not in p.parts and p.name != "overview.json"]
    ok = [r for r in records.values() if r["status"] == "ok"]
    assert sorted(p.name for p in stored) == sorted(r["path"] for r in ok)
    for rec in ok:
        body = (out / rec["path"]).read_bytes()
        assert sha256(body) == rec["sha256"] and len(body) == rec["bytes"]
    chunked = records[f.url(0, "/o/chunked.png?size=4000&nolength=1")]
    assert chunked["bytes"] == 4000 and chunked["sha256"] == sha256(expected_png("/o/chunked.png", 4000))


def test_empty_content_types_accept_anything(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """content_types [] switches the Content-Type check off: text/html bodies are stored."""
    url = two_hosts.url(0, "/ct/page.png?ctype=text/html&size=2000")
    assert run(tmp_path, [url])[url]["reason"] == "content_type:text/html"
    rec = run(tmp_path, [url], name="any", content_types=[])[url]
    assert rec["status"] == "ok" and rec["bytes"] == 2000


def test_requests_leave_while_a_manifest_batch_is_still_turned_into_jobs(tmp_path: Path,
                                                                        two_hosts: FakeHostFarm) -> None:
    """A batch of manifest rows becomes jobs a slice at a time, with the event loop free in between:
    the first request goes out before the batch's last row is read, and replies are read meanwhile."""
    rows = 4 * FEED_SLICE_ROWS
    urls = [two_hosts.url(i % 2, f"/feed/{i}.png") for i in range(rows)]
    cfg = DownloadConfig(input=str(write_manifest(tmp_path / "m.parquet", urls)), output=str(tmp_path / "out"),
                         batch_rows=rows, **FAST)
    job = DownloadJob(cfg)
    added_at_first_request: list[int] = []
    fetch = job._fetch

    def first_noted(session: Any, one: Any) -> Any:
        if not added_at_first_request:
            added_at_first_request.append(job.scheduler.pending + job.counters.ok)
        return fetch(session, one)

    job._fetch = first_noted  # type: ignore[method-assign]
    overview = asyncio.run(job.run())
    assert overview["totals"]["ok"] == rows
    assert added_at_first_request[0] <= FEED_SLICE_ROWS  # one slice was read, not the whole batch


@pytest.mark.parametrize("paarc", [False, True], ids=["fixed", "paarc"])
def test_a_host_that_announces_its_quota_is_held_before_it_refuses(tmp_path: Path, farm_factory: FarmFactory,
                                                                    paarc: bool) -> None:
    """Three hosts allow 10 requests a second each (fixed windows). Two say so on every reply, one
    as X-RateLimit-* (a Unix time), one as RateLimit-* (seconds); the third says nothing. The two
    that announce are held before their quota runs out and refuse nothing; the silent one's quota
    is found by refusals."""
    styles = ("x", "ietf", None)
    farm = farm_factory([HostSpec(f"127.0.0.{2 + i}", latency_s=0.02, window_quota=10, window_s=1.0,
                                  announce_quota=style, retry_after_s=1) for i, style in enumerate(styles)])
    urls = [farm.url(h, f"/quota/{h}-{i}.png?size=300") for i in range(25) for h in range(len(styles))]
    records = run(tmp_path, urls, enable_paarc=paarc, C_init=4, retry_backoff_sec=0.05)
    assert all(r["status"] == "ok" for r in records.values())
    refused = [st["n_429"] for st in farm.stats().values()]
    assert refused[0] == 0 and refused[1] == 0, refused
    assert refused[2] >= 1

"""Telemetry from real downloads: subscribers off the event loop, JSONL on S3 (moto), and the HTTP
push to a real collector on loopback (a small aiohttp server here), alive, refusing, hanging or gone."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from flowdc.api import download_partition
from flowdc.config import DownloadConfig
from flowdc.report import render_report
from flowdc.sinks import TOKEN_ENV
from flowdc.telemetry import HostSnapshot, RunSnapshot, Snapshot, Telemetry, snapshot_from_dict
from flowdc.telemetry_read import TelemetrySource, summarize
from flowdc.testing.fakehosts import FakeHostFarm, write_manifest
from tests.cloud_servers import s3_filesystem
from tests.integration.conftest import FAST
from tests.integration.sinks_helpers import s3_options


class Collector:
    """POST /telemetry on 127.0.0.1: keeps each request's headers and lines; `mode` says how to answer."""

    def __init__(self) -> None:
        self.mode = "ok"  # ok | refuse (503) | hang (answers after 20 s)
        self.posts: list[tuple[dict[str, str], list[dict[str, Any]]]] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="collector", daemon=True)
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        self.posts.append((dict(request.headers), [json.loads(line) for line in body.splitlines() if line]))
        if self.mode == "hang":
            await asyncio.sleep(20)
        return web.Response(status=503 if self.mode == "refuse" else 204)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/telemetry", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    def __enter__(self) -> Collector:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def collector() -> Iterator[Collector]:
    with Collector() as c:
        yield c


def _manifest(tmp_path: Path, farm: FakeHostFarm, tag: str, n: int, query: str = "") -> Path:
    return write_manifest(tmp_path / f"{tag}.parquet", [farm.url(i % 2, f"/{tag}/{i}.png{query}") for i in range(n)])


def _cfg(manifest: Path, out: Path | str, **options: Any) -> DownloadConfig:
    return DownloadConfig(input=str(manifest), output=str(out), **{**FAST, **options})


def test_a_slow_subscriber_does_not_slow_the_download(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """The subscriber blocks for up to 30 s on its first snapshot. Called on the download's event
    loop it would hold the download that long; off the loop the download ends in a few seconds."""
    manifest = _manifest(tmp_path, two_hosts, "slow-sub", 60, "?slowbody=0.05")
    release = threading.Event()
    seen: list[Snapshot] = []
    threads: set[int] = set()

    def slow(snap: Snapshot) -> None:
        threads.add(threading.get_ident())
        release.wait(30)
        seen.append(snap)

    telemetry = Telemetry()
    telemetry.subscribe(slow)
    start = time.monotonic()
    result = download_partition(_cfg(manifest, tmp_path / "out", concurrent_downloads=4, enable_paarc=False,
                                      C_init=2), telemetry=telemetry, run_id="r-slow", partition_id="00001")
    elapsed = time.monotonic() - start
    release.set()
    telemetry.close()
    assert result.ok == 60
    assert elapsed < 20, f"the download waited for its subscriber ({elapsed:.1f} s)"
    assert threads and threading.get_ident() not in threads
    last = seen[-1]
    assert isinstance(last, RunSnapshot) and last.done and last.ok == 60 and last.run_id == "r-slow"


def test_push_to_a_collector(tmp_path: Path, two_hosts: FakeHostFarm, collector: Collector,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Host and run snapshots arrive as JSON lines with the bearer token; the last says done."""
    monkeypatch.setenv(TOKEN_ENV, "sekrit-token")
    manifest = _manifest(tmp_path, two_hosts, "push", 60, "?slowbody=0.05")
    result = download_partition(_cfg(manifest, tmp_path / "out", telemetry_push=collector.url, concurrent_downloads=4,
                                     enable_paarc=False, C_init=2), run_id="r-push", partition_id="00007")
    assert result.ok == 60
    assert collector.posts
    for headers, _ in collector.posts:
        assert headers["Authorization"] == "Bearer sekrit-token"
        assert headers["Content-Type"] == "application/x-ndjson"
    snaps = [snapshot_from_dict(line) for _, lines in collector.posts for line in lines]
    hosts = [s for s in snaps if isinstance(s, HostSnapshot)]
    runs = [s for s in snaps if isinstance(s, RunSnapshot)]
    assert {h.host for h in hosts} <= {h.netloc for h in two_hosts.hosts} and hosts
    assert {(s.run_id, s.partition_id) for s in snaps} == {("r-push", "00007")}
    assert runs[-1].done and runs[-1].ok == 60 and not any(r.done for r in runs[:-1])
    assert all(h.limit == 2 and h.state == "FIXED" for h in hosts)


@pytest.mark.parametrize("mode", ["gone", "refuse", "hang"])
def test_a_collector_that_fails_never_stops_the_download(tmp_path: Path, two_hosts: FakeHostFarm,
                                                         collector: Collector, mode: str) -> None:
    """Unreachable, 503 or never answering: the download stores everything, and a hanging
    collector costs the run at most the telemetry's closing wait."""
    if mode == "gone":
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{sock.getsockname()[1]}"  # closed again before the download starts
    else:
        collector.mode, url = mode, collector.url
    manifest = _manifest(tmp_path, two_hosts, f"dead-{mode}", 40, "?slowbody=0.05")
    start = time.monotonic()
    result = download_partition(_cfg(manifest, tmp_path / "out", telemetry_push=url, concurrent_downloads=4,
                                     enable_paarc=False, C_init=2))
    assert result.ok == 40 and not result.interrupted
    assert time.monotonic() - start < 20
    if mode != "gone":
        assert collector.posts  # it was tried


def test_jsonl_on_s3_is_written_in_parts(tmp_path: Path, two_hosts: FakeHostFarm, s3_endpoint: str) -> None:
    """S3 cannot append: the telemetry URL becomes a folder of whole JSONL parts."""
    fs = s3_filesystem(s3_endpoint)
    fs.mkdir("tele-parts")
    manifest = _manifest(tmp_path, two_hosts, "s3tel", 30, "?slowbody=0.05")
    url = "s3://tele-parts/logs/run.jsonl"
    result = download_partition(_cfg(manifest, "s3://tele-parts/out", telemetry=url,
                                     storage_options=s3_options(s3_endpoint), concurrent_downloads=4,
                                     enable_paarc=False, C_init=2), run_id="r-s3")
    assert result.ok == 30
    parts = sorted(fs.ls("tele-parts/logs/run.jsonl"))
    assert parts and all(p.rsplit("/", 1)[-1].startswith("part-") and p.endswith(".jsonl") for p in parts)
    lines = [json.loads(line) for p in parts for line in fs.cat_file(p).decode().splitlines()]
    kinds: Sequence[str] = [line["kind"] for line in lines]
    assert "host" in kinds and kinds[-1] == "run" and lines[-1]["done"] is True
    assert {line["run_id"] for line in lines} == {"r-s3"}
    # flowdc report reads the folder of parts straight from the store.
    summary = summarize(TelemetrySource(url, s3_options(s3_endpoint)))
    assert set(summary) <= {h.netloc for h in two_hosts.hosts} and summary
    out = render_report(url, str(tmp_path / "report.png"), s3_options(s3_endpoint))
    assert Path(out).read_bytes().startswith(b"\x89PNG")


def test_the_last_snapshot_holds_every_hosts_final_counts(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """A run ends between two snapshot rounds: its hosts' last requests came after their last
    round. The run's closing snapshot names every host it sent to, so the telemetry's totals are
    the run's own, even for a run shorter than one round."""
    rows = 40
    manifest = _manifest(tmp_path, two_hosts, "final", rows)
    path = tmp_path / "t.jsonl"
    download_partition(_cfg(manifest, tmp_path / "out", telemetry=str(path)))
    totals = summarize(path)
    assert {host: t["requests"] for host, t in totals.items()} == {h.netloc: rows // 2 for h in two_hosts.hosts}
    assert all(t["ok"] == rows // 2 for t in totals.values())
    last = [json.loads(line) for line in path.read_text().splitlines()][-3:]
    assert [r.get("kind", "host") for r in last] == ["host", "host", "run"] and last[-1]["done"]

"""`flowdc size` against real servers on loopback.

Fake hosts (flowdc.testing.fakehosts) serve HEAD, Range GETs, redirects and scripted faults. A few
behaviours they do not have (a HEAD without Content-Length, a host that ignores Range, a
Content-Range without a total) come from the raw HTTP host below, also on 127.0.0.x.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa
import pytest

import flowdc.size as size_mod
from flowdc.cli import main
from flowdc.config import ConfigError, SizeConfig
from flowdc.size import Reservoir, estimate_total, run_size
from flowdc.testing.fakehosts import FakeHostFarm, HostSpec, run_farm_in_thread, write_manifest

pytestmark = pytest.mark.timeout(60)

QUICK: dict[str, Any] = {"quiet": True, "timeout": 5.0, "concurrent_requests": 32}


@pytest.fixture(scope="module")
def farm() -> Iterator[FakeHostFarm]:
    specs = [HostSpec("127.0.0.61", name="a"), HostSpec("127.0.0.62", name="b"),
             HostSpec("127.0.0.63", name="c", latency_s=0.02)]
    with run_farm_in_thread(specs) as f:
        yield f


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(size_mod, "RETRY_BACKOFF_S", 0.05)


def size(tmp_path: Path, urls: list[str], **options: Any) -> dict[str, Any]:
    manifest = write_manifest(tmp_path / "m.parquet", urls)
    return run_size(SizeConfig(input=str(manifest), **{**QUICK, **options}))


# -- a host with the odd behaviours the fake hosts lack ---------------------------------------------
class RawHost:
    """HTTP/1.1 written by hand, one request per connection. `?mode=` picks the behaviour:

    head_nolen    HEAD 200 without Content-Length; Range GET -> 206 bytes 0-0/SIZE
    ignore_range  HEAD 405; GET ignores Range -> 200 with Content-Length and the whole body
    star          HEAD 200 without Content-Length; Range GET -> 206 bytes 0-0/*
    chunked       HEAD 405; GET ignores Range -> 200 chunked, no length
    """

    def __init__(self, ip: str) -> None:
        self.ip = ip
        self.port = 0
        self.body_bytes_sent: dict[str, int] = {}
        self.loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None

    def url(self, path: str) -> str:
        return f"http://{self.ip}:{self.port}{path}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.ip, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            method, target, _ = head.split("\r\n", 1)[0].split(" ", 2)
            query = parse_qs(urlsplit(target).query)
            await self._answer(writer, method, target, query["mode"][0], int(query["size"][0]))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, w: asyncio.StreamWriter, method: str, target: str, mode: str, size: int) -> None:
        if method == "HEAD":
            status = "405 Method Not Allowed" if mode in ("ignore_range", "chunked") else "200 OK"
            w.write(f"HTTP/1.1 {status}\r\nContent-Type: image/png\r\nConnection: close\r\n\r\n".encode())
            return
        if mode in ("head_nolen", "star"):
            total = str(size) if mode == "head_nolen" else "*"
            w.write(f"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-0/{total}\r\nContent-Length: 1\r\n"
                    "Connection: close\r\n\r\nx".encode())
            return
        framing = "Transfer-Encoding: chunked" if mode == "chunked" else f"Content-Length: {size}"
        w.write(f"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n{framing}\r\nConnection: close\r\n\r\n".encode())
        await self._stream_body(w, target, size, chunked=mode == "chunked")

    async def _stream_body(self, w: asyncio.StreamWriter, target: str, size: int, *, chunked: bool) -> None:
        block = b"\0" * 65536
        self.body_bytes_sent[target] = 0
        while self.body_bytes_sent[target] < size:
            piece = f"{len(block):x}\r\n".encode() + block + b"\r\n" if chunked else block
            w.write(piece)
            await w.drain()  # raises once the client has closed: the body was not read
            self.body_bytes_sent[target] += len(block)


@contextlib.contextmanager
def raw_host(ip: str) -> Iterator[RawHost]:
    host = RawHost(ip)
    thread = threading.Thread(target=host.loop.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(host.start(), host.loop).result(10)
        yield host
    finally:
        asyncio.run_coroutine_threadsafe(host.stop(), host.loop).result(10)
        host.loop.call_soon_threadsafe(host.loop.stop)
        thread.join(10)
        host.loop.close()


# -- fallbacks -------------------------------------------------------------------------------------
def test_head_405_falls_back_to_range(farm: FakeHostFarm, tmp_path: Path) -> None:
    urls = [farm.url(0, f"/h405-{i}.png?size={1000 + i}&head=405") for i in range(5)]
    urls += [farm.url(0, f"/plain-{i}.png?size={2000 + i}") for i in range(3)]
    report = size(tmp_path, urls)
    assert report["resolved"] == 8 and report["unresolved"] == 0
    assert report["methods"] == {"head": 3, "range": 5, "get_length": 0}
    assert report["bytes_resolved"] == sum(1000 + i for i in range(5)) + sum(2000 + i for i in range(3))
    assert report["requests"] == 3 + 2 * 5  # a refused HEAD costs one extra request
    # Every row was asked: the total is exact and the interval has no width.
    assert report["estimate_total_bytes"] == report["ci95_low"] == report["ci95_high"] == report["bytes_resolved"]
    assert report["sampled"] is False


def test_head_without_length_and_ignored_range(tmp_path: Path) -> None:
    big = 64 * 1024 * 1024
    with raw_host("127.0.0.64") as host:
        urls = [host.url("/a?mode=head_nolen&size=12345"), host.url("/b?mode=head_nolen&size=777"),
                host.url(f"/c?mode=ignore_range&size={big}"), host.url("/d?mode=star&size=5"),
                host.url("/e?mode=chunked&size=1000000")]
        started = time.monotonic()
        report = size(tmp_path, urls)
        elapsed = time.monotonic() - started
        sent = dict(host.body_bytes_sent)
    assert report["methods"] == {"head": 0, "range": 2, "get_length": 1}
    assert report["bytes_resolved"] == 12345 + 777 + big
    assert report["unresolved_reasons"] == {"no_total_in_content_range": 1, "no_length": 1}
    # The 64 MiB body was not read: the client closed after the headers (socket buffers hold a few MB).
    assert sent["/c?mode=ignore_range&size=" + str(big)] < big // 2
    assert elapsed < 10


def test_404_is_unresolved_with_reason_not_zero(farm: FakeHostFarm, tmp_path: Path) -> None:
    urls = [farm.url(1, f"/ok-{i}.png?size=3000") for i in range(6)]
    urls += [farm.url(1, f"/gone-{i}.png?fail=404") for i in range(2)] + ["", "ftp://example.invalid/x.png"]
    report = size(tmp_path, urls)
    assert report["rows_total"] == report["rows_asked"] == 10
    assert report["resolved"] == 6 and report["unresolved"] == 4
    assert report["unresolved_reasons"] == {"http_404": 2, "no_url": 1, "unsupported_scheme:ftp": 1}
    assert report["mean_object_bytes"] == 3000  # the 404s did not drag the mean down as zeros
    assert report["bytes_resolved"] == 18000
    assert report["estimate_resolvable_bytes"] == 18000
    assert report["estimate_total_bytes"] == 30000  # mean of resolved x all rows, said so below
    assert "assumes unresolved rows have the same mean size" in report["summary_text"]
    assert report["unresolved_share"] == pytest.approx(0.4)
    assert {e["reason"] for e in report["unresolved_examples"]} == {"http_404", "no_url", "unsupported_scheme:ftp"}


def test_rows_a_download_skips_for_x_robots_tag_are_not_counted(farm: FakeHostFarm, tmp_path: Path) -> None:
    """Rows whose replies opt out (X-Robots-Tag: noai) are skipped by the download, so the estimate
    leaves them out: it counted them, whatever --disallowed_header_directives said."""
    urls = [farm.url(0, f"/robots-{i}.png?size=3000") for i in range(4)]
    urls += [farm.url(0, f"/robots-no-{i}.png?size=3000&robots=noai") for i in range(2)]
    report = size(tmp_path, urls)
    assert report["resolved"] == 4 and report["unresolved_reasons"] == {"x_robots_tag:noai": 2}
    assert size(tmp_path, urls, disallowed_header_directives=[])["resolved"] == 6  # honouring none


def test_redirects_followed_up_to_five(farm: FakeHostFarm, tmp_path: Path) -> None:
    urls = [farm.url(0, "/r1.png?size=4100&redirect=1"), farm.url(0, "/r5.png?size=4200&redirect=5"),
            farm.url(0, "/r6.png?size=4300&redirect=6"), farm.url(0, "/r5h.png?size=4400&redirect=5&head=405")]
    report = size(tmp_path, urls)
    assert report["bytes_resolved"] == 4100 + 4200 + 4400
    assert report["methods"] == {"head": 2, "range": 1, "get_length": 0}
    assert report["unresolved_reasons"] == {"too_many_redirects": 1}


# -- politeness ------------------------------------------------------------------------------------
def test_retries_on_429_and_503_with_retry_after(farm: FakeHostFarm, tmp_path: Path) -> None:
    farm.reset_stats()
    urls = [farm.url(2, "/once.png?size=5000&fail=429x1&retry_after=1"), farm.url(2, "/down.png?fail=503")]
    started = time.monotonic()
    report = size(tmp_path, urls)
    elapsed = time.monotonic() - started
    attempts = farm.stats()[farm.hosts[2].netloc]["attempts"]
    assert report["resolved"] == 1 and report["bytes_resolved"] == 5000
    assert report["unresolved_reasons"] == {"http_503": 1}
    assert attempts["/once.png?size=5000&fail=429x1&retry_after=1"] == 2
    assert attempts["/down.png?fail=503"] == 3  # three attempts in all, then unresolved
    assert elapsed >= 0.9  # Retry-After: 1 held the retry


def test_per_host_limit_holds(farm: FakeHostFarm, tmp_path: Path) -> None:
    farm.reset_stats()
    urls = [farm.url(2, f"/lim-{i}.png?size=1500") for i in range(30)]
    report = size(tmp_path, urls, enable_paarc=False, C_init=2, C_min=1, concurrent_requests=50)
    assert report["resolved"] == 30
    assert farm.stats()[farm.hosts[2].netloc]["max_in_system"] <= 2
    assert report["hosts"] == [{"host": farm.hosts[2].netloc, "rows_asked": 30, "resolved": 30, "bytes": 45000}]


def test_a_host_that_announces_its_quota_is_held_before_it_refuses(tmp_path: Path) -> None:
    """A host allowing 10 HEADs a second (fixed windows) says how many are left on every reply:
    size holds it before the quota runs out, and nothing is refused."""
    spec = HostSpec("127.0.0.64", latency_s=0.01, window_quota=10, window_s=1.0, announce_quota="x", retry_after_s=1)
    with run_farm_in_thread([spec]) as quota_farm:
        urls = [quota_farm.url(0, f"/q-{i}.png?size=700") for i in range(25)]
        report = size(tmp_path, urls, enable_paarc=False, C_init=4)
        assert report["resolved"] == 25
        assert quota_farm.stats()[quota_farm.hosts[0].netloc]["n_429"] == 0


# -- sampling --------------------------------------------------------------------------------------
def _population(n: int, seed: int) -> list[int]:
    """Skewed, like image sizes: lognormal around 20 KB, 500 B .. 300 KB."""
    rng = random.Random(seed)
    return [int(min(max(rng.lognormvariate(math.log(20_000), 0.9), 500), 300_000)) for _ in range(n)]


def test_sample_ci_covers_true_total(farm: FakeHostFarm, tmp_path: Path) -> None:
    sizes = _population(2000, seed=11)
    urls = [farm.url(i % 3, f"/s-{i}.png?size={s}") for i, s in enumerate(sizes)]
    report = size(tmp_path, urls, sample=250, seed=3)
    true_total = sum(sizes)
    assert report["rows_total"] == 2000 and report["rows_asked"] == 250 and report["sampled"] is True
    assert report["resolved"] == 250
    assert report["ci95_low"] < true_total < report["ci95_high"]
    assert 0 < report["ci95_high"] - report["ci95_low"] < 0.5 * true_total
    assert report["estimated_download_seconds"] == pytest.approx(report["estimate_total_bytes"] / 100e6, abs=0.1)
    assert "95% CI" in report["summary_text"] and "top hosts (in the sample)" in report["summary_text"]


def test_reservoir_is_uniform_and_ci_covers_about_95_percent() -> None:
    """No network: the sampler and the interval over 400 seeded repetitions of one population."""
    sizes = _population(3000, seed=5)
    true_total = sum(sizes)
    column = pa.array([str(i) for i in range(len(sizes))])
    batches = [column.slice(o, 700) for o in range(0, len(sizes), 700)]  # uneven batches on purpose
    covered, picks = 0, [0] * len(sizes)
    for seed in range(400):
        res = Reservoir(150, seed)
        for b in batches:
            res.offer(b)
        chosen = [int(x) for x in res.items if x is not None]
        assert len(set(chosen)) == 150
        for i in chosen:
            picks[i] += 1
        ys = [sizes[i] for i in chosen]
        est = estimate_total(len(sizes), len(ys), sum(ys), sum(y * y for y in ys), 1 - 150 / len(sizes))
        covered += est.low <= true_total <= est.high
    assert 0.88 <= covered / 400 <= 0.99
    # Each row is picked with probability 150/3000; halves of the manifest must get equal shares.
    first, second = sum(picks[:1500]), sum(picks[1500:])
    assert abs(first - second) / (first + second) < 0.03


def test_sample_larger_than_manifest_is_a_census(farm: FakeHostFarm, tmp_path: Path) -> None:
    urls = [farm.url(0, f"/all-{i}.png?size={1000 * (i + 1)}") for i in range(4)]
    report = size(tmp_path, urls, sample=100)
    assert report["rows_asked"] == 4 and report["sampled"] is False
    assert report["ci95_low"] == report["ci95_high"] == 10000


# -- inputs ----------------------------------------------------------------------------------------
def test_directory_of_partitions(farm: FakeHostFarm, tmp_path: Path) -> None:
    parts = tmp_path / "parts"
    expected = 0
    for p, suffix in enumerate(("parquet", "csv", "csv.gz")):  # any manifest the reader reads
        urls = [farm.url(p, f"/p{p}-{i}.png?size={1000 + 100 * i}") for i in range(5)]
        expected += sum(1000 + 100 * i for i in range(5))
        write_manifest(parts / f"part-{p:05d}.{suffix}", urls)
    (parts / "plan.json").write_text("{}")
    report = run_size(SizeConfig(directory=str(parts), **QUICK))
    assert report["rows_total"] == 15 and report["bytes_resolved"] == expected
    assert len(report["inputs"]) == 3 and report["hosts_total"] == 3
    assert json.loads((parts / "size_report.json").read_text())["bytes_resolved"] == expected


def test_bad_inputs_are_config_errors(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.parquet", ["http://127.0.0.61:1/x.png"])
    with pytest.raises(ConfigError, match="URL column 'photo'"):
        run_size(SizeConfig(input=str(manifest), url_column="photo", quiet=True))
    with pytest.raises(ConfigError, match="exactly one"):
        run_size(SizeConfig(input=str(manifest), directory=str(tmp_path), quiet=True))
    with pytest.raises(ConfigError, match="exactly one"):
        run_size(SizeConfig(quiet=True))
    with pytest.raises(ConfigError, match=r"--report s3://bucket/r\.json: a local path is needed"):
        run_size(SizeConfig(input=str(manifest), report="s3://bucket/r.json", quiet=True))  # it wrote ./s3:/bucket
    # A manifest on a store: its report goes to the working folder, not to ./https:/host/.
    assert SizeConfig(input="https://host/m.parquet").report_path() == "size_report.json"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no manifest files"):
        run_size(SizeConfig(directory=str(tmp_path / "empty"), quiet=True))


def test_cli_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = write_manifest(tmp_path / "m.parquet", ["http://127.0.0.61:1/x.png"])
    assert main(["size", "--input", str(manifest), "--url_column", "photo", "--quiet"]) == 2
    assert main(["size", "--input", str(manifest), "--directory", str(tmp_path), "--quiet"]) == 2
    assert main(["size", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("flowdc: error:") for line in err)


@pytest.mark.parametrize("where", ["folder", "under_a_file"])
def test_unwritable_report_path_is_refused_before_any_request(farm: FakeHostFarm, tmp_path: Path, where: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Not after asking every URL: the report's path is checked first, one line, exit 2."""
    manifest = write_manifest(tmp_path / "m.parquet", [farm.url(0, f"/r-{i}.png") for i in range(5)])
    (tmp_path / "taken").mkdir()
    report = tmp_path / "taken" if where == "folder" else manifest / "r.json"
    farm.reset_stats()
    assert main(["size", "--input", str(manifest), "--report", str(report), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"flowdc: error: --report {report}: ")
    assert farm.totals()["requests"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.parquet", "taken"]  # no temporary left


@pytest.mark.parametrize(("option", "value"), [("concurrent_requests", "0"), ("concurrent_requests", "-1"),
                                               ("rate_mb_s", "0"), ("rate_mb_s", "-3")])
def test_options_that_cannot_work_exit_2(tmp_path: Path, option: str, value: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    manifest = write_manifest(tmp_path / "m.parquet", ["http://127.0.0.61:1/x.png"])
    assert main(["size", "--input", str(manifest), f"--{option}", value, "--quiet"]) == 2
    err = capsys.readouterr().err
    shown = float(value) if option == "rate_mb_s" else int(value)
    assert err.count("\n") == 1 and f"{option} must be > 0, got {shown}" in err
    assert not (tmp_path / "size_report.json").exists()


def test_the_bar_ends_with_the_final_counts(farm: FakeHostFarm, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The bar's last figures are the run's, not those of its last half-second tick."""
    urls = [farm.url(i % 2, f"/bar-{i}.png?size=1000") for i in range(30)] + [farm.url(0, "/gone.png?fail=404")]
    size(tmp_path, urls, quiet=False)
    last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "31/31" in last and "resolved=30 unresolved=1" in last, last


def test_cli_end_to_end(farm: FakeHostFarm, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    urls = [farm.url(i % 2, f"/cli-{i}.png?size={2048 + i}") for i in range(40)]
    manifest = write_manifest(tmp_path / "dataset.csv", urls)
    code = main(["size", "--input", str(manifest), "--url_column", "url", "--sample", "25", "--seed", "1",
                 "--rate_mb_s", "10", "--quiet"])
    assert code == 0
    report = json.loads((tmp_path / "size_report.json").read_text())
    assert report["rows_total"] == 40 and report["rows_asked"] == 25 and report["resolved"] == 25
    assert report["rate_mb_s"] == 10.0
    out = capsys.readouterr().out
    assert "estimated total" in out and "size_report.json" in out and out == report["summary_text"] + "\n"

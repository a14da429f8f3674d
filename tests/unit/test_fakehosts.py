"""The fake hosts behave as documented: each scripted fault, the load models, the helpers.

Every request goes to 127.0.0.x servers started here; each test is bounded by client timeouts.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import aiohttp
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from PIL import Image

from flowdc.testing.fakehosts import FakeHostFarm, HostSpec, make_png, parse_fault, run_farm_in_thread, write_manifest

PLAIN, QUEUED, CAPPED, BUCKET, RANDOM = range(5)


@pytest.fixture(scope="module")
def farm() -> Iterator[FakeHostFarm]:
    specs = [
        HostSpec("127.0.0.2", name="plain", stall_s=3.0),
        HostSpec("127.0.0.3", name="queued", capacity=2, latency_s=0.2),
        HostSpec("127.0.0.4", name="capped", hard_cap=3, latency_s=0.3, retry_after_s=1.5),
        HostSpec("127.0.0.5", name="bucket", rate_per_s=5, burst=2),
        HostSpec("127.0.0.6", name="random", fault_rate=0.5, faults=("503", "404"), seed=7),
    ]
    with run_farm_in_thread(specs) as f:
        yield f


Reply = tuple[int, dict[str, str], bytes]


async def _get(
    session: aiohttp.ClientSession, url: str, *, method: str = "GET", headers: dict[str, str] | None = None
) -> Reply:
    async with session.request(method, url, headers=headers, allow_redirects=True) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def fetch(url: str, method: str = "GET", headers: dict[str, str] | None = None, timeout: float = 5) -> Reply:
    async def go() -> Reply:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            return await _get(s, url, method=method, headers=headers)

    return asyncio.run(go())


def fetch_many(urls: list[str], timeout: float = 5.0) -> list[Reply]:
    """All at once on one session, with enough connections that none waits client-side."""

    async def go() -> list[Reply]:
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            return await asyncio.gather(*(_get(s, u) for u in urls))

    return asyncio.run(go())


def host_stats(farm: FakeHostFarm, index: int) -> dict[str, Any]:
    return farm.hosts[index].stats


# -- images -------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [100, 4096, 70_000, 300_000])
def test_png_is_valid_with_exact_size(size: int) -> None:
    data = make_png("/img/1.png", size)
    assert len(data) == size
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        assert img.format == "PNG"


def test_png_is_deterministic_per_path_and_tiny_sizes_still_decode() -> None:
    assert make_png("/a", 5000) == make_png("/a", 5000)
    assert make_png("/a", 5000) != make_png("/b", 5000)
    tiny = make_png("/a", 10)
    assert len(tiny) > 10
    with Image.open(io.BytesIO(tiny)) as img:
        assert img.size == (1, 1)


# -- plain serving ------------------------------------------------------------------------------


def test_get_head_and_range(farm: FakeHostFarm) -> None:
    url = farm.url(PLAIN, "/img/plain.png")
    status, headers, body = fetch(url)
    assert status == 200 and headers["Content-Type"] == "image/png" and len(body) == 4096
    status, headers, empty = fetch(url, method="HEAD")
    assert status == 200 and headers["Content-Length"] == "4096" and empty == b""
    status, headers, first = fetch(url, headers={"Range": "bytes=0-0"})
    assert status == 206 and headers["Content-Range"] == "bytes 0-0/4096" and first == body[:1]
    assert fetch(url + "?head=405", method="HEAD")[0] == 405
    assert fetch(url + "?head=405")[0] == 200


def test_size_ctype_nolength_redirect(farm: FakeHostFarm) -> None:
    status, _, body = fetch(farm.url(PLAIN, "/s.png?size=12345"))
    assert status == 200 and len(body) == 12345
    assert fetch(farm.url(PLAIN, "/c.png?ctype=text/html"))[1]["Content-Type"].startswith("text/html")
    status, headers, body = fetch(farm.url(PLAIN, "/n.png?nolength=1&size=40000"))
    assert status == 200 and "Content-Length" not in headers and len(body) == 40000
    before = host_stats(farm, PLAIN)["status"].get(302, 0)
    status, _, body = fetch(farm.url(PLAIN, "/r.png?redirect=3"))
    assert status == 200 and body[:4] == b"\x89PNG"
    assert host_stats(farm, PLAIN)["status"][302] - before == 3


def test_slowbody_sends_headers_first(farm: FakeHostFarm) -> None:
    async def go() -> tuple[float, float]:
        async with aiohttp.ClientSession() as s:
            t0 = time.monotonic()
            async with s.get(farm.url(PLAIN, "/slow.png?slowbody=0.5")) as resp:
                t_headers = time.monotonic() - t0
                await resp.read()
            return t_headers, time.monotonic() - t0

    t_headers, t_total = asyncio.run(go())
    assert t_headers < 0.2 and t_total >= 0.45


# -- scripted faults ----------------------------------------------------------------------------


def test_parse_fault() -> None:
    assert parse_fault("503x2") is not None and parse_fault("503x2").times == 2  # type: ignore[union-attr]
    assert parse_fault("reset").times is None  # type: ignore[union-attr]
    assert parse_fault("403").times is None  # type: ignore[union-attr]
    assert parse_fault("teapot") is None and parse_fault("503xz") is None and parse_fault("200") is None
    with pytest.raises(ValueError):
        FakeHostFarm([HostSpec("127.0.0.2", fault_rate=0.1, faults=("teapot",))])


def test_status_faults_with_counts(farm: FakeHostFarm) -> None:
    url = farm.url(PLAIN, "/f.png?fail=503x2")
    assert [fetch(url)[0] for _ in range(3)] == [503, 503, 200]
    url = farm.url(PLAIN, "/f.png?fail=500x3")
    assert [fetch(url)[0] for _ in range(4)] == [500, 500, 500, 200]
    url = farm.url(PLAIN, "/f.png?fail=404")
    assert [fetch(url)[0] for _ in range(3)] == [404, 404, 404]
    assert host_stats(farm, PLAIN)["attempts"]["/f.png?fail=404"] == 3
    assert fetch(farm.url(PLAIN, "/f.png?fail=403"))[0] == 403


def test_retry_after_forms(farm: FakeHostFarm) -> None:
    url = farm.url(PLAIN, "/ra.png?fail=429x1&retry_after=2")
    status, headers, _ = fetch(url)
    assert status == 429 and headers["Retry-After"] == "2"
    assert fetch(url)[0] == 200
    status, headers, _ = fetch(farm.url(PLAIN, "/rd.png?fail=429x1&retry_after=3&retry_after_date=1"))
    wait = parsedate_to_datetime(headers["Retry-After"]).timestamp() - time.time()
    assert status == 429 and 2.0 <= wait <= 4.1


def test_reset_then_ok(farm: FakeHostFarm) -> None:
    # aiohttp >= 3.10 silently resends an idempotent request once after a reset, so a client
    # only sees a reset that happens twice in a row.
    url = farm.url(PLAIN, "/reset.png?fail=resetx2")
    with pytest.raises(aiohttp.ClientError):
        fetch(url)
    assert host_stats(farm, PLAIN)["attempts"]["/reset.png?fail=resetx2"] == 2
    assert fetch(url)[0] == 200
    with pytest.raises(aiohttp.ClientError):
        fetch(farm.url(PLAIN, "/reset.png?fail=reset"))


def test_truncate_cuts_body_short(farm: FakeHostFarm) -> None:
    url = farm.url(PLAIN, "/t.png?fail=truncatex1&size=20000")
    with pytest.raises(aiohttp.ClientPayloadError):
        fetch(url)
    status, headers, body = fetch(url)
    assert status == 200 and len(body) == 20000 == int(headers["Content-Length"])


def test_stall_times_out_and_frees_the_host(farm: FakeHostFarm) -> None:
    url = farm.url(PLAIN, "/stall.png?fail=stallx1")
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        fetch(url, timeout=0.3)
    assert time.monotonic() - t0 < 1.0
    assert fetch(url)[0] == 200
    time.sleep(0.05)  # the server notices the client left and cancels the stalled handler
    assert host_stats(farm, PLAIN)["in_system"] == 0


# -- load models --------------------------------------------------------------------------------


def test_capacity_queues_in_fifo_order(farm: FakeHostFarm) -> None:
    farm.hosts[QUEUED].reset_stats()
    t0 = time.monotonic()
    replies = fetch_many([farm.url(QUEUED, f"/q{i}.png") for i in range(6)])
    elapsed = time.monotonic() - t0
    assert all(r[0] == 200 for r in replies)
    assert 0.55 <= elapsed < 1.2  # 6 requests / 2 slots * 0.2 s
    st = host_stats(farm, QUEUED)
    assert st["max_in_service"] == 2 and st["max_in_system"] == 6


def test_hard_cap_answers_429_with_retry_after(farm: FakeHostFarm) -> None:
    farm.hosts[CAPPED].reset_stats()
    replies = fetch_many([farm.url(CAPPED, f"/h{i}.png") for i in range(7)])
    statuses = sorted(r[0] for r in replies)
    assert statuses == [200, 200, 200, 429, 429, 429, 429]
    assert all(r[1]["Retry-After"] == "1.5" for r in replies if r[0] == 429)
    assert host_stats(farm, CAPPED)["n_429"] == 4


def test_token_bucket(farm: FakeHostFarm) -> None:
    farm.hosts[BUCKET].reset_stats()
    first = [fetch(farm.url(BUCKET, f"/b{i}.png")) for i in range(4)]
    assert [r[0] for r in first] == [200, 200, 429, 429]  # burst 2, then empty
    assert int(first[2][1]["Retry-After"]) >= 1
    time.sleep(0.25)  # 5/s refills one token in 0.2 s
    assert fetch(farm.url(BUCKET, "/b9.png"))[0] == 200


def test_random_faults_are_seeded(farm: FakeHostFarm) -> None:
    def run() -> list[int]:
        farm.hosts[RANDOM].reset_stats()
        return [fetch(farm.url(RANDOM, f"/x{i}.png"))[0] for i in range(30)]

    first = run()
    assert set(first) == {200, 404, 503}
    assert run() == first  # reset_stats reseeds the RNG


def test_reset_stats_restarts_scripted_attempts(farm: FakeHostFarm) -> None:
    url = farm.url(QUEUED, "/again.png?fail=503x1")
    assert [fetch(url)[0] for _ in range(2)] == [503, 200]
    farm.hosts[QUEUED].reset_stats()
    assert fetch(url)[0] == 503


def test_events_are_bounded() -> None:
    with run_farm_in_thread([HostSpec("127.0.0.8", keep_events=3)]) as f:
        statuses = [fetch(f.url(0, f"/e{i}.png" + ("?fail=503" if i == 4 else "")))[0] for i in range(5)]
        events = f.hosts[0].stats["events"]
    assert statuses == [200, 200, 200, 200, 503]
    assert [e[3] for e in events] == ["/e2.png", "/e3.png", "/e4.png?fail=503"]
    assert events[-1][2] == 503 and all(e[0] <= e[1] for e in events)


def test_farm_addresses_and_stats_keys(farm: FakeHostFarm) -> None:
    ips = [h.base_url.split("//")[1].split(":")[0] for h in farm.hosts]
    assert ips == ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"]
    assert list(farm.stats()) == [h.netloc for h in farm.hosts]
    assert farm.url(PLAIN, "x.png") == farm.hosts[PLAIN].base_url + "/x.png"
    assert farm.totals()["requests"] >= 1


def test_async_farm_context() -> None:
    async def go() -> int:
        async with FakeHostFarm([HostSpec("127.0.0.7", image_bytes=500)]) as f:
            async with aiohttp.ClientSession() as s:
                status, _, body = await _get(s, f.url(0, "/a.png"))
            assert f.stats()[f.hosts[0].netloc]["ok"] == 1
            return len(body) if status == 200 else -1

    assert asyncio.run(go()) == 500


# -- manifests ----------------------------------------------------------------------------------


def test_write_manifest_parquet_and_csv(tmp_path: Path) -> None:
    urls = ["http://127.0.0.2:1/a.png", "http://127.0.0.2:1/b.png"]
    p = write_manifest(tmp_path / "m.parquet", urls, labels=["cat", "dog"], extra_columns={"w": [1, 2]})
    table = pq.read_table(p)
    assert table.column_names == ["url", "label", "w"] and table.column("url").to_pylist() == urls
    c = write_manifest(tmp_path / "m.csv", urls)
    assert pcsv.read_csv(c).column("url").to_pylist() == urls
    with pytest.raises(ValueError):
        write_manifest(tmp_path / "m.x", urls, fmt="xml")

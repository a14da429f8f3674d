"""Manifests read from where fsspec reads (http(s)://, s3://), streamed like local files.

The manifests are served by real servers on loopback: an aiohttp file server (with Range support,
which parquet's random access uses) and moto for S3.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pytest
from aiohttp import web

from flowdc.manifest import Manifest
from flowdc.testing.fakehosts import FakeHostFarm, HostSpec
from tests.cloud_servers import S3_SECRET_KEY, s3_filesystem
from tests.integration.conftest import download, latest, run_flowdc, write_manifest
from tests.integration.sinks_helpers import s3_options

FarmFactory = Callable[[Sequence[HostSpec]], FakeHostFarm]


@contextlib.contextmanager
def file_server(folder: Path) -> Iterator[str]:
    """Serve `folder` over HTTP on 127.0.0.1 (any free port) from a thread; yields the base URL."""
    app = web.Application()
    app.router.add_static("/", folder)
    with served(app) as base:
        yield base


@contextlib.contextmanager
def app_server(routes: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]]) -> Iterator[str]:
    """Serve GET `routes` (path -> handler) over HTTP on 127.0.0.1; yields the base URL."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    with served(app) as base:
        yield base


@contextlib.contextmanager
def served(app: web.Application) -> Iterator[str]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runner = web.AppRunner(app)

    async def start() -> int:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_a_gz_manifest_sent_with_content_encoding_is_read_as_the_text_that_arrives(tmp_path: Path) -> None:
    """Some web servers send photos.csv.gz with `Content-Encoding: gzip`: the HTTP client
    decompresses it on the way, so the text arrives plain and is read as such."""
    rows = "url\tlabel\n" + "".join(f"http://127.0.0.2:9/{i}.png\t{'ab'[i % 2]}\n" for i in range(30))
    body = gzip.compress(rows.encode())

    async def encoded(_request: web.Request) -> web.Response:
        return web.Response(body=body, headers={"Content-Encoding": "gzip", "Content-Type": "text/csv"})

    with app_server({"/photos.csv.gz": encoded}) as base:
        table = pa.Table.from_batches(list(Manifest(f"{base}/photos.csv.gz", "url", batch_rows=7).batches()))
    assert table.column("label").to_pylist() == ["ab"[i % 2] for i in range(30)]
    assert table.column("row").to_pylist() == list(range(30))


@pytest.mark.parametrize("suffix", ["parquet", "csv"])
def test_download_from_an_http_manifest(tmp_path: Path, farm_factory: FarmFactory, suffix: str) -> None:
    farm = farm_factory([HostSpec("127.0.0.2", image_bytes=200)])
    urls = [farm.url(0, f"/h/{i}.png") for i in range(25)]
    write_manifest(tmp_path / "served" / f"m.{suffix}", urls, labels=["a", "b"] * 12 + ["a"])
    with file_server(tmp_path / "served") as base:
        manifest = Manifest(f"{base}/m.{suffix}", "url", batch_rows=10)
        assert manifest.columns[:2] == ["url", "label"]
        assert [r for b in manifest.batches() for r in b.column("row").to_pylist()] == list(range(25))
        overview = download(f"{base}/m.{suffix}", tmp_path / "out", label="label")
        missing = run_flowdc("download", "--input", f"{base}/nothing.{suffix}", "--output", str(tmp_path / "o2"))
    assert overview["totals"]["ok"] == 25
    assert sorted(r["url"] for r in latest(tmp_path / "out")) == sorted(urls)
    assert missing.returncode == 2 and "input file not found" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_download_from_an_s3_manifest(tmp_path: Path, farm_factory: FarmFactory, s3_endpoint: str) -> None:
    farm = farm_factory([HostSpec("127.0.0.2", image_bytes=200)])
    urls = [farm.url(0, f"/s/{i}.png") for i in range(15)]
    local = write_manifest(tmp_path / "m.parquet", urls)
    fs = s3_filesystem(s3_endpoint)
    fs.mkdir("manifests-in")
    fs.put(str(local), "manifests-in/m.parquet")
    overview = download("s3://manifests-in/m.parquet", tmp_path / "out", input_storage_options=s3_options(s3_endpoint))
    assert overview["totals"]["ok"] == 15
    assert overview["config"]["input_storage_options"] == ["client_kwargs", "key", "secret"]  # names only
    assert S3_SECRET_KEY not in (tmp_path / "out" / "overview.json").read_text()


def test_a_compressed_tab_separated_manifest_over_http(tmp_path: Path) -> None:
    """A tab-separated photos.csv.gz served over HTTP is decompressed as it streams (its file object
    is opened again for each pass, never sought back): the local file's columns, rows and row
    numbers; and a ragged row in one is skipped and shown, as in a local file."""
    urls = [f"http://127.0.0.2:1/p/{i}.jpg" for i in range(30)]
    local = write_manifest(tmp_path / "served" / "photos.csv.gz", urls, labels=["a", "b", "c"] * 10, delimiter="\t")
    lines = ["url\tlabel", *(f"http://127.0.0.2:1/{i}.png\ta" for i in range(250)), "http://127.0.0.2:1/x.png\ta\tb"]
    (tmp_path / "served" / "ragged.tsv.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    with file_server(tmp_path / "served") as base:
        remote = Manifest(f"{base}/photos.csv.gz", "url", batch_rows=7)
        rows = [r for b in remote.batches() for r in b.to_pylist()]
        ragged = Manifest(f"{base}/ragged.tsv.gz", "url")
        assert sum(b.num_rows for b in ragged.batches()) == 250
        (problem,) = ragged.problems()  # where it is would take another download: the line is shown
        assert "1 line(s) skipped, not split" in problem and "'http://127.0.0.2:1/x.png\\ta\\tb' (3 of 2" in problem
    assert remote.delimiter == "\t" and remote.columns == ["url", "label"]
    assert rows == [r for b in Manifest(str(local), "url").batches() for r in b.to_pylist()]
    assert [r["row"] for r in rows] == list(range(30))

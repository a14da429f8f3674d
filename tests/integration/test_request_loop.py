"""`size` and `download` share one request loop and one mapping of failures to reasons: the same
failing URLs get the same reason names from both commands."""

from __future__ import annotations

import socket
from pathlib import Path

import aiohttp
import pytest

from flowdc.config import DownloadConfig, SizeConfig
from flowdc.download import run_download
from flowdc.fetch import failure_of
from flowdc.signals import Signal
from flowdc.size import run_size
from flowdc.testing.fakehosts import FakeHostFarm, write_manifest
from tests.integration.conftest import latest


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.2", 0))
        return f"http://127.0.0.2:{sock.getsockname()[1]}/gone.png"  # nothing listens once closed


def test_size_and_download_name_failures_alike(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    urls = {
        two_hosts.url(0, "/rl/missing.png?fail=404"): "http_404",
        two_hosts.url(0, "/rl/refused.png?fail=410"): "http_410",
        two_hosts.url(1, "/rl/loop.png?redirect=4"): "too_many_redirects",
        two_hosts.url(1, "/rl/stall.png?fail=stall"): "timeout",
        _dead_url(): "connect_failed",
    }
    manifest = write_manifest(tmp_path / "m.parquet", list(urls))
    overview = run_download(DownloadConfig(input=str(manifest), output=str(tmp_path / "out"), timeout=0.5,
                                           max_redirects=2, max_retry_attempts=0, quiet=True, create_tar=False))
    assert overview["totals"]["failed"] == len(urls)
    downloaded = {r["url"]: r["reason"] for r in latest(tmp_path / "out")}
    report = run_size(SizeConfig(input=str(manifest), timeout=0.5, max_redirects=2, quiet=True,
                                 report=str(tmp_path / "size.json")))
    sized = {e["url"]: e["reason"] for e in report["unresolved_examples"]}
    assert downloaded == urls
    assert sized == urls


@pytest.mark.parametrize(("exc", "headers", "expected"), [
    (TimeoutError(), False, (Signal.TIMEOUT, "timeout", True)),
    (TimeoutError(), True, (Signal.OBJECT_ERROR, "body_timeout", True)),  # the object is slow, not the host
    (aiohttp.TooManyRedirects(None, ()), True, (Signal.OBJECT_ERROR, "too_many_redirects", False)),  # type: ignore[arg-type]
    (aiohttp.ServerDisconnectedError(), False, (Signal.CONN_ERROR, "disconnected", True)),
    (aiohttp.ClientPayloadError("cut"), True, (Signal.CONN_ERROR, "truncated", True)),
    (ConnectionResetError(), False, (Signal.CONN_ERROR, "connection_error", True)),
    (UnicodeDecodeError("utf-8", b"", 0, 1, "bad"), True, (Signal.OBJECT_ERROR, "error:UnicodeDecodeError", False)),
])
def test_the_one_mapping_of_failures(exc: BaseException, headers: bool, expected: tuple[Signal, str, bool]) -> None:
    assert failure_of(exc, headers_arrived=headers)[:3] == expected

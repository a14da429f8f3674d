"""Shared helpers and fixtures for the `flowdc download` integration tests.

Every server is a fake host (flowdc.testing.fakehosts) or the small status host below, bound to
127.0.0.x; nothing leaves loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import signal
import socket
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiohttp import web

from flowdc import child_process
from flowdc.config import DownloadConfig
from flowdc.download import run_download
from flowdc.ledger import Ledger
from flowdc.storage import TMP_MARK, Destination
from flowdc.testing.fakehosts import FakeHostFarm, HostSpec, make_png, run_farm_in_thread, write_manifest

REPO = Path(__file__).resolve().parents[2]
# Defaults that keep a test run short: quick retries, no archive, no progress bar.
FAST: dict[str, Any] = {"timeout": 5.0, "retry_backoff_sec": 0.05, "quiet": True, "create_tar": False}
DEFAULT_IMAGE_BYTES = 4096


def free_port(ip: str, low: int = 20000, high: int = 29999) -> int:
    """A port in [low, high] that is free on `ip` right now, for farms that must keep their URLs."""
    ports = list(range(low, high + 1))
    random.shuffle(ports)
    for port in ports[:500]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((ip, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port on {ip} in {low}-{high}")


def expected_png(url_path: str, size: int = DEFAULT_IMAGE_BYTES) -> bytes:
    """The exact body a fake host serves for `url_path` (without the query) at `size` bytes."""
    return make_png(url_path, size)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def latest(out: str | Path) -> list[dict[str, Any]]:
    """Each manifest row's final ledger record, sorted by row."""
    return sorted(Ledger(Destination(str(out))).latest().to_pylist(), key=lambda r: r["row"])


def by_url(out: str | Path) -> dict[str, dict[str, Any]]:
    return {r["url"]: r for r in latest(out)}


def download(manifest: str | Path, out: str | Path, **options: Any) -> dict[str, Any]:
    """Run a download in-process with the FAST defaults; returns the overview."""
    cfg = DownloadConfig(input=str(manifest), output=str(out), **{**FAST, **options})
    cfg.check()
    return run_download(cfg)


def run_flowdc(*args: str, timeout: float = 120.0, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m flowdc ARGS` as a real subprocess (exit codes, stderr, signals)."""
    return subprocess.run([sys.executable, "-m", "flowdc", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd or REPO, env=subprocess_env())


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("COLUMNS", None)
    return env


def visible_files(root: Path) -> list[Path]:
    """Every file under root (recursive), including hidden ones."""
    return sorted(p for p in root.rglob("*") if p.is_file())


def temporaries(root: Path) -> list[Path]:
    return [p for p in visible_files(root) if TMP_MARK in p.name]


def snapshot_tree(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under root."""
    return {str(p.relative_to(root)): sha256(p.read_bytes()) for p in visible_files(root)}


def requested_urls(farm: FakeHostFarm) -> dict[str, int]:
    """Full URL -> number of requests the farm served for it (any status)."""
    counts: dict[str, int] = {}
    for host in farm.hosts:
        for path_qs, n in host.stats["attempts"].items():
            counts[host.base_url + path_qs] = n
    return counts


def mixed_images_manifest(tmp_path: Path, farm: FakeHostFarm, rows: int) -> Path:
    """Rows over both hosts and two labels: JPEG and PNG (read by flowdc's header walk), WebP and
    GIF (Pillow, in the child), a JPEG header over noise (refused), and one body larger than the
    ring, so it goes through the pipe."""
    urls, labels = [], []
    kinds = ("fmt=jpeg", "fmt=png", "fmt=webp", "fmt=gif", "size=9000")
    for i in range(rows):
        urls.append(farm.url(i % 2, f"/wp/{i}.img?{kinds[i % len(kinds)]}&w={20 + i % 7}&h={10 + i % 5}"))
        labels.append(("cat", "dog")[i % 2])
    urls.append(farm.url(0, "/wp/bad.jpg?body=badheader"))
    urls.append(farm.url(1, "/wp/large.png?size=300000"))
    labels += ["cat", "dog"]
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"url": urls, "label": labels}), path)
    return path


def run_with_a_killed_write_process(
        tmp_path: Path, farm_factory: Callable[[Sequence[HostSpec]], FakeHostFarm],
        children: list[child_process.ChildLink], ready: Callable[[Path], bool], **options: Any,
) -> tuple[FakeHostFarm, Path, Path, dict[int, dict[str, Any]]]:
    """A run of 1,500 3-KB PNGs from two hosts of 20 ms latency whose write process is SIGKILLed
    once `ready(out)` holds: it must fail with WriteProcessDied. Returns the farm, the manifest,
    the output and the rows it recorded as ok, by row."""
    farm = farm_factory([HostSpec("127.0.0.2", latency_s=0.02), HostSpec("127.0.0.3", latency_s=0.02)])
    manifest, out = tmp_path / "m.parquet", tmp_path / "out"
    pq.write_table(pa.table({"url": [farm.url(i % 2, f"/kill/{i}.png?size=3000") for i in range(1500)]}), manifest)

    def kill_when_ready() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if children and out.exists() and ready(out):
                os.kill(children[0].pid, signal.SIGKILL)
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_when_ready)
    killer.start()
    try:
        with pytest.raises(child_process.WriteProcessDied, match="exit code -9"):
            download(manifest, out, **options)
    finally:
        killer.join()
    return farm, manifest, out, {r["row"]: r for r in latest(out) if r["status"] == "ok"}


def size_limited_write_process_script(**config: Any) -> str:
    """A script that downloads argv[1] into argv[2] with `config` and its write process started at
    once under a 1-MB file size limit. The parent lowers the limit only while it starts the child
    (which keeps it) and ignores SIGXFSZ, so the child's writes past 1 MB fail for real (EFBIG), as
    on a full disk."""
    options = ", ".join(f"{name}={value!r}" for name, value in config.items())
    return textwrap.dedent(f"""
        import resource, signal, sys
        from flowdc import child_process, write_process
        from flowdc.config import DownloadConfig
        from flowdc.download import run_download

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        real_start = child_process.start_child

        def start_limited(*args):
            resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, resource.RLIM_INFINITY))
            try:
                return real_start(*args)
            finally:
                resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

        child_process.start_child = start_limited
        write_process.START_AFTER = 0  # from the first sample on
        cfg = DownloadConfig(input=sys.argv[1], output=sys.argv[2], timeout=5.0, retry_backoff_sec=0.01,
                             quiet=True, {options})
        cfg.check()
        run_download(cfg)
    """)


def tar_samples(out: Path) -> dict[str, dict[str, bytes]]:
    """Every sample of every NNNNNN.tar shard, read with tarfile: key -> {ext: bytes}.

    Fails if any member (key + extension) appears twice, within a shard or across shards.
    """
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                fh = tar.extractfile(member)
                assert fh is not None, member.name
                parts = samples.setdefault(key, {})
                assert ext not in parts, f"duplicate member {member.name} (in {shard.name})"
                parts[ext] = fh.read()
    return samples


@pytest.fixture
def write_children(monkeypatch: pytest.MonkeyPatch) -> list[child_process.ChildLink]:
    """Every write process started, in either role (the run decides; this only keeps them)."""
    started: list[child_process.ChildLink] = []
    real_init = child_process.ChildLink.__init__

    def counting_init(self: child_process.ChildLink, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        started.append(self)

    monkeypatch.setattr(child_process.ChildLink, "__init__", counting_init)
    return started


@pytest.fixture
def farm_factory() -> Iterator[Callable[[Sequence[HostSpec]], FakeHostFarm]]:
    """Start farms of fake hosts in background threads; all are stopped at teardown."""
    with contextlib.ExitStack() as stack:

        def start(specs: Sequence[HostSpec]) -> FakeHostFarm:
            return stack.enter_context(run_farm_in_thread(specs))

        yield start


@pytest.fixture
def two_hosts(farm_factory: Callable[[Sequence[HostSpec]], FakeHostFarm]) -> FakeHostFarm:
    """Two plain, fast fake hosts with small images; stalls held 3 s at most."""
    return farm_factory([HostSpec("127.0.0.2", stall_s=3.0, keep_events=500),
                         HostSpec("127.0.0.3", stall_s=3.0, keep_events=500)])


# -- a host answering any status code -----------------------------------------------------------
class StatusHost:
    """A tiny server for statuses the fake hosts do not script (403, 408, 410, ...).

    GET /s/CODE/TIMES/NAME answers CODE for the first TIMES requests of that path (TIMES 0 means
    always), then a PNG. Request counts per path are in `attempts`.
    """

    def __init__(self, ip: str) -> None:
        self.ip = ip
        self.port = 0
        self.attempts: dict[str, int] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="status-host", daemon=True)
        self._runner: web.AppRunner | None = None

    def url(self, code: int, times: int, name: str) -> str:
        return f"http://{self.ip}:{self.port}/s/{code}/{times}/{name}.png"

    async def _handle(self, request: web.Request) -> web.Response:
        path = request.path
        n = self.attempts[path] = self.attempts.get(path, 0) + 1
        code, times = int(request.match_info["code"]), int(request.match_info["times"])
        if times == 0 or n <= times:
            return web.Response(status=code, text=f"status {code}")
        return web.Response(body=expected_png(path), content_type="image/png")

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/s/{code}/{times}/{name}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.ip, 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def status_host() -> Iterator[StatusHost]:
    host = StatusHost("127.0.0.9")
    host.start()
    try:
        yield host
    finally:
        host.stop()


__all__ = ["FAST", "StatusHost", "by_url", "download", "expected_png", "free_port", "latest", "requested_urls",
           "run_flowdc", "sha256", "snapshot_tree", "tar_samples", "temporaries", "visible_files", "write_manifest"]


def signal_when(proc: subprocess.Popen[str], ready: Callable[[], bool], sig: signal.Signals, *,
                wait_s: float = 60.0, exit_s: float = 60.0) -> tuple[str, str]:
    """Send `sig` to `proc` once `ready()` holds (or `wait_s` passed, or it ended), then collect its
    stdout and stderr; a process still there after `exit_s` is killed (so a test fails, never hangs)."""
    try:
        deadline = time.monotonic() + wait_s
        while not ready() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(sig)
        return proc.communicate(timeout=exit_s)
    finally:
        if proc.poll() is None:
            proc.kill()

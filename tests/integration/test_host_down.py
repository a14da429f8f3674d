"""A host that answers nothing (it accepts connections and never replies) is declared down: its rows
wait while other hosts have work, a probe now and then asks whether it is back, and the rows still
waiting at the end fail as host_down without a request, for a later run to fetch."""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from flowdc.testing.fakehosts import FakeHostFarm, HostSpec, write_manifest
from tests.integration.conftest import download, latest

DEAD_IP = "127.0.0.6"


class Blackhole:
    """Accepts every connection and never answers; counts the connections (one per request sent)."""

    def __init__(self, ip: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((ip, 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            self._take(conn)

    def _take(self, conn: socket.socket) -> None:
        self.held.append(conn)

    def close(self) -> None:
        if self.sock.fileno() < 0:  # closed already
            return
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() under way, which would keep the port bound
        self.sock.close()
        for conn in self.held:
            conn.close()


class Slammer(Blackhole):
    """Accepts every connection and resets it at once (a firewall's RST, a server that is closing
    down); counts the connections."""

    def _take(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
        conn.close()
        self.held.append(conn)


@contextmanager
def blackhole(ip: str) -> Iterator[Blackhole]:
    hole = Blackhole(ip)
    try:
        yield hole
    finally:
        hole.close()


def test_a_silent_host_is_taken_as_down_and_a_later_run_fetches_its_rows(
        tmp_path: Path, farm_factory: Callable[[Sequence[HostSpec]], FakeHostFarm]) -> None:
    up = farm_factory([HostSpec("127.0.0.2")])
    out = tmp_path / "out"
    with blackhole(DEAD_IP) as hole:
        dead_urls = [f"http://{DEAD_IP}:{hole.port}/img/{i}.png" for i in range(60)]
        manifest = write_manifest(tmp_path / "m.parquet", [up.url(0, f"/img/{i}.png") for i in range(20)] + dead_urls)
        overview = download(manifest, out, timeout=0.3, host_down_after=1.0, max_retry_attempts=3,
                            retry_backoff_sec=0.05)
        sent = len(hole.held)
    rows = latest(out)
    assert [r["status"] for r in rows[:20]] == ["ok"] * 20
    dead = rows[20:]
    reasons = Counter(r["reason"] for r in dead)
    assert set(reasons) <= {"timeout", "host_down"} and reasons["host_down"] >= 30, reasons
    assert all(r["status"] == "failed" and r["retryable"] for r in dead)
    assert sent < len(dead_urls)  # without it: every row, four times each
    assert overview["totals"]["failed"] == 60

    farm_factory([HostSpec(DEAD_IP, port=hole.port)])  # the host is back, at the same address
    again = download(manifest, out, timeout=5.0)
    assert (again["this_run"]["ok"], again["this_run"]["already_done"]) == (60, 20)
    assert [r["status"] for r in latest(out)] == ["ok"] * 80


def test_requests_still_out_to_a_down_host_do_not_hold_the_runs_end(
        tmp_path: Path, farm_factory: Callable[[Sequence[HostSpec]], FakeHostFarm]) -> None:
    """8 requests time out together after 3 s and take the host as down. As each of the first 7
    timed out, a worker sent the next row: 7 requests were out when the host was taken as down, and
    the run used to wait out their 3-s timeouts. With nothing else left they are given up on: the
    run ends at once, and their rows fail as host_down, for a later run."""
    up = farm_factory([HostSpec("127.0.0.2")])
    with blackhole(DEAD_IP) as hole:
        urls = [up.url(0, f"/img/{i}.png") for i in range(10)] + [
            f"http://{DEAD_IP}:{hole.port}/img/{i}.png" for i in range(30)]
        manifest = write_manifest(tmp_path / "m.parquet", urls)
        started = time.monotonic()
        overview = download(manifest, tmp_path / "out", timeout=3.0, host_down_after=2.0, max_retry_attempts=0)
        took = time.monotonic() - started
        sent = len(hole.held)
    dead = latest(tmp_path / "out")[10:]
    reasons = Counter(r["reason"] for r in dead)
    assert reasons == {"timeout": 8, "host_down": 22}, reasons
    assert sent >= 12  # requests were out when the host was taken as down...
    assert took < 5.0, took  # ... and their timeouts (at 6 s) were not waited for
    assert all(r["retryable"] for r in dead) and overview["this_run"]["ok"] == 10


def test_with_host_down_after_0_every_row_is_asked(tmp_path: Path) -> None:
    with blackhole(DEAD_IP) as hole:
        manifest = write_manifest(tmp_path / "m.parquet", [f"http://{DEAD_IP}:{hole.port}/{i}.png" for i in range(12)])
        for after, expected in ((0.0, {"timeout"}), (0.01, {"timeout", "host_down"})):
            download(manifest, tmp_path / f"out{after}", timeout=0.2, host_down_after=after, max_retry_attempts=0,
                     C_init=2)
            assert {r["reason"] for r in latest(tmp_path / f"out{after}")} == expected, after


def test_a_host_back_while_others_still_have_work_gets_its_rows_fetched_in_the_same_run(
        tmp_path: Path, farm_factory: Callable[[Sequence[HostSpec]], FakeHostFarm],
        caplog: pytest.LogCaptureFixture) -> None:
    busy = farm_factory([HostSpec("127.0.0.2", capacity=4, latency_s=0.1)])  # 40 rows/s: 300 rows take 7.5 s
    hole = Blackhole(DEAD_IP)

    def back() -> None:
        hole.close()
        farm_factory([HostSpec(DEAD_IP, port=hole.port)])

    urls = [busy.url(0, f"/img/{i}.png") for i in range(300)] + [
        f"http://{DEAD_IP}:{hole.port}/img/{i}.png" for i in range(30)]
    manifest = write_manifest(tmp_path / "m.parquet", urls)
    revive = threading.Timer(2.5, back)  # silent for 2.5 s: declared down at the second wave of timeouts, 2 s
    revive.start()
    try:
        with caplog.at_level(logging.WARNING, logger="flowdc.scheduler"):
            overview = download(manifest, tmp_path / "out", timeout=1.0, host_down_after=1.5, max_retry_attempts=6)
    finally:
        revive.join()
        hole.close()
    assert "taken as down" in caplog.text and "answers again" in caplog.text
    assert "a longer --timeout" in caplog.text  # a blackhole only times out: it might be a slow host
    assert overview["this_run"]["ok"] == 330, Counter(r["reason"] for r in latest(tmp_path / "out"))
    assert {r["status"] for r in latest(tmp_path / "out")} == {"ok"}


def test_a_host_that_resets_every_connection_is_not_asked_for_every_row(
        tmp_path: Path, farm_factory: Callable[[Sequence[HostSpec]], FakeHostFarm]) -> None:
    """A reset (or refused) connection fails at once: without a pace, each of the 2,000 rows was
    tried four times, as fast as the client could send. The host gets one request at a time,
    further apart each time, and is taken as down at host_down_after."""
    up = farm_factory([HostSpec("127.0.0.2")])
    slammer = Slammer(DEAD_IP)
    try:
        urls = [up.url(0, f"/img/{i}.png") for i in range(20)] + [
            f"http://{DEAD_IP}:{slammer.port}/img/{i}.png" for i in range(2000)]
        manifest = write_manifest(tmp_path / "m.parquet", urls)
        started = time.monotonic()
        overview = download(manifest, tmp_path / "out", timeout=5.0, host_down_after=1.5, max_retry_attempts=3,
                            retry_backoff_sec=0.05)
        took = time.monotonic() - started
        asked = len(slammer.held)
    finally:
        slammer.close()
    rows = latest(tmp_path / "out")
    assert [r["status"] for r in rows[:20]] == ["ok"] * 20
    reasons = Counter(r["reason"] for r in rows[20:])
    assert reasons["host_down"] >= 1990, reasons
    assert all(r["retryable"] for r in rows[20:])
    assert asked <= 60, asked  # about 8 at once, then one every 0.25, 0.5, 1 s
    assert took < 6.0, took
    assert overview["this_run"]["ok"] == 20

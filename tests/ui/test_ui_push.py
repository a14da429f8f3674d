"""Two download processes push their telemetry to `flowdc ui` (its POST /telemetry route, the
telemetry contract's push), and the page, in a real browser, shows both runs' hosts: the way
partitions running elsewhere reach the page without the manager's collector."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flowdc.config import DownloadConfig
from flowdc.testing.browser import flowdc_process, launch_chromium
from flowdc.testing.fakehosts import HostSpec, run_farm_in_thread, write_manifest
from flowdc.ui.server import free_port
from tests.ui.helpers import needs_chromium

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = [needs_chromium, pytest.mark.slow, pytest.mark.skipif(
    "telemetry_push" not in {f.name for f in dataclasses.fields(DownloadConfig)},
    reason="downloads cannot push telemetry in this version (no telemetry_push option)")]
TOKEN = "push-token-for-the-test"


def test_two_download_processes_push_and_the_page_shows_both_runs_hosts(tmp_path: Path):
    env = {**os.environ, "FLOWDC_TELEMETRY_TOKEN": TOKEN}
    with run_farm_in_thread([HostSpec("127.0.0.2", latency_s=0.05), HostSpec("127.0.0.3", latency_s=0.05)]) as farm:
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        with flowdc_process(["ui", "--port", str(port), "--workdir", str(tmp_path / "ui")], url, env=env), \
                sync_api.sync_playwright() as pw:
            downloads = []
            for i in range(2):  # one host each, as two partitions of a host-partitioned plan would have
                urls = [farm.url(i, f"/p{i}/{n}.png") for n in range(150)]
                manifest = write_manifest(tmp_path / f"m{i}.parquet", urls)
                downloads.append(subprocess.Popen(
                    [sys.executable, "-m", "flowdc", "download", "--input", str(manifest), "--output",
                     str(tmp_path / f"out{i}"), "--telemetry_push", f"http://127.0.0.1:{port}", "--quiet",
                     "--no_create_tar", "--timeout", "5"], env=env, stdout=subprocess.DEVNULL))
            for proc in downloads:
                assert proc.wait(timeout=90) == 0
            browser = launch_chromium(pw)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(url)
            deadline = time.monotonic() + 20
            while len(rows := host_rows_by_run(page)) < 2 and time.monotonic() < deadline:
                time.sleep(0.5)
            page.screenshot(path=str(tmp_path / "ui-push.png"), full_page=True)
            browser.close()
    assert len(rows) == 2, rows  # two runs (partitions), each with its own host
    assert sorted(h for hosts in rows.values() for h in hosts) == ["127.0.0.2", "127.0.0.3"]


def host_rows_by_run(page) -> dict[str, set[str]]:
    by_run: dict[str, set[str]] = {}
    for cells in page.locator(".flowdc-hosts tbody tr").evaluate_all(
            "rows => rows.map(r => Array.from(r.querySelectorAll('td')).map(td => td.innerText))"):
        hosts = [c for c in cells if c.startswith("127.0.0.")]
        if hosts:  # columns: tick, partition / run, host, ...
            by_run.setdefault(cells[cells.index(hosts[0]) - 1], set()).add(hosts[0].split(":")[0])
    return by_run

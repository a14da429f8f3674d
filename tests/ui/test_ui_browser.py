"""The page in a real browser (Playwright driving Debian's Chromium): `flowdc ui` starts a
download against fake hosts on loopback, and the table and the charts show that run's hosts, the
throttled one at a visibly lower limit than the open one."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from flowdc.testing.browser import flowdc_process, launch_chromium
from flowdc.testing.fakehosts import HostSpec, run_farm_in_thread, write_manifest
from flowdc.ui.server import free_port
from tests.ui.helpers import chart_series, host_rows, needs_chromium

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = [needs_chromium, pytest.mark.slow]

OPEN, THROTTLED = "127.0.0.2", "127.0.0.3"


def test_a_download_started_in_the_browser_shows_its_hosts_live(tmp_path: Path):
    specs = [HostSpec(OPEN, latency_s=0.03),
             HostSpec(THROTTLED, latency_s=0.01, hard_cap=2, retry_after_s=0.2)]  # 429 above 2 in flight
    with run_farm_in_thread(specs) as farm:
        urls = [farm.url(int(i % 4 == 0), f"/img/{i}.png") for i in range(1200)]  # 3 of 4 rows: the open host
        manifest = write_manifest(tmp_path / "m.parquet", urls)
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        with flowdc_process(["ui", "--port", str(port), "--workdir", str(tmp_path / "ui")], url), \
                sync_api.sync_playwright() as pw:
            browser = launch_chromium(pw)
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            page.goto(url)
            page.get_by_text("Configure and run").click()
            page.locator(".flowdc-field-input input").fill(str(manifest))
            page.locator(".flowdc-field-output input").fill(str(tmp_path / "out"))
            page.locator(".flowdc-start").click()
            page.get_by_text("download started").wait_for(timeout=10_000)
            page.get_by_text("Live", exact=True).click()

            seen: list[dict[str, Any]] = []  # what the page showed, twice a second
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                rows = host_rows(page)
                series = chart_series(page, "flowdc-limit-chart")
                seen.append({"rows": rows, "points": sum(len(d) for d in series.values())})
                if "finished" in page.locator(".flowdc-status").inner_text() and len(rows) == 2:
                    break
                time.sleep(0.5)
            throughput = chart_series(page, "flowdc-throughput-chart")
            page.screenshot(path=str(tmp_path / "ui-browser.png"), full_page=True)
            browser.close()
    rows = seen[-1]["rows"]
    assert set(rows) == {OPEN, THROTTLED}, rows
    assert int(rows[THROTTLED]["429/503"]) > 0  # the limit came down because the host said so
    # While both hosts had work, the table showed the throttled one at a lower limit than the open one
    # (both start at C_init; the open host's own limit may dip when a loaded machine inflates latency).
    both = [s["rows"] for s in seen if len(s["rows"]) == 2 and "idle" not in {r["state"] for r in s["rows"].values()}]
    assert any(int(r[THROTTLED]["limit"]) < int(r[OPEN]["limit"]) for r in both), both
    # The charts updated while the run went on: more points on later refreshes, for both hosts.
    points = [s["points"] for s in seen]
    assert points[-1] > points[0] and len(set(points)) > 2, points
    limits = {name.split(":")[0]: data for name, data in series.items()}
    assert set(limits) == {OPEN, THROTTLED}
    assert max(lim for _, lim in limits[THROTTLED]) < max(lim for _, lim in limits[OPEN])
    assert any(rate > 0 for _, rate in throughput["rows/s"])
    assert (tmp_path / "ui-browser.png").stat().st_size > 10_000

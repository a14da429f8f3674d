"""Regenerate the screenshots in docs/ui.md: `flowdc demo --ui` on free ports, Chromium, PNGs.

    .venv/bin/python scripts/ui_screenshots.py [--out docs/img]

Everything runs on loopback and stops by itself (about 30 s).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flowdc.testing.browser import flowdc_process, launch_chromium
from flowdc.ui.server import free_port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "img"))
    parser.add_argument("--rows", type=int, default=6000)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory() as tmp, flowdc_process(
            ["demo", "--ui", "--port", str(port), "--hosts_port", "0", "--rows", str(args.rows), "--out", tmp], url,
            stdout=subprocess.DEVNULL), sync_playwright() as pw:
        browser = launch_chromium(pw)
        page = browser.new_page(viewport={"width": 1400, "height": 1150})
        page.goto(url)
        time.sleep(2)  # mid-run: the controller still at work
        page.screenshot(path=str(out / "ui-live-running.png"))
        page.get_by_text("finished").wait_for(timeout=120_000)
        page.reload()
        time.sleep(1.5)
        page.screenshot(path=str(out / "ui-live.png"), full_page=True)
        page.get_by_text("Configure and run").click()
        page.get_by_text("PAARC (per-host concurrency)").click()
        time.sleep(1)
        page.screenshot(path=str(out / "ui-configure.png"), full_page=True)
        browser.close()
    for name in ("ui-live-running.png", "ui-live.png", "ui-configure.png"):
        print(out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())

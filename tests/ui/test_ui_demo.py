"""`flowdc demo --ui --port P`: about 12 s after the start, Chromium's DOM dump of the page (the
acceptance check, run as a person would) lists the demo's five hosts with their limits."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from flowdc.testing.browser import CHROMIUM, CHROMIUM_FLAGS, flowdc_process
from flowdc.ui.server import free_port
from tests.ui.helpers import needs_chromium

pytestmark = [needs_chromium, pytest.mark.slow]
DEMO_IPS = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6")


def test_demo_ui_page_lists_the_five_demo_hosts_with_their_limits(tmp_path: Path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    started = time.monotonic()
    with flowdc_process(["demo", "--ui", "--port", str(port), "--hosts_port", "0", "--rows", "1500",
                         "--out", str(tmp_path / "demo")], url, stdout=subprocess.PIPE, text=True) as proc:
        time.sleep(max(0.0, 12 - (time.monotonic() - started)))
        dom = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, "--virtual-time-budget=8000", "--dump-dom", url],
                             capture_output=True, text=True, timeout=60).stdout
    out = proc.stdout.read() if proc.stdout else ""
    assert f"flowdc ui: {url}" in out
    (tmp_path / "dom.html").write_text(dom)
    limits = {}
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", dom, re.S):
        cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        hosts = [c for c in cells if c.startswith("127.0.0.")]
        if hosts:  # columns: tick, partition, host, state, limit, ...
            host_at = cells.index(hosts[0])
            limits[hosts[0].split(":")[0]] = int(cells[host_at + 2])
    assert sorted(limits) == list(DEMO_IPS), dom[-2000:]
    assert all(limit >= 1 for limit in limits.values())
    assert "finished" in dom  # the page keeps showing the finished run

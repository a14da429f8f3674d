"""Debian's Chromium for the UI's browser tests, its screenshots and the demo check.

Playwright drives /usr/bin/chromium (never a browser Playwright downloads itself), with the flags
that keep it off the network: every page it opens is on loopback.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

CHROMIUM = os.environ.get("FLOWDC_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


def launch_chromium(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_FLAGS), headless=True)


def wait_for_http(url: str, timeout: float = 30.0, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers (perhaps 401): it is up
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


@contextlib.contextmanager
def flowdc_process(args: Sequence[str], url: str, timeout: float = 60.0,
                   **popen: Any) -> Iterator[subprocess.Popen[Any]]:
    """`python -m flowdc ARGS` until its page answers at url; Ctrl-C (SIGINT) on the way out."""
    # NiceGUI takes a server started under pytest for its own test server; this one is a real one.
    env = {k: v for k, v in popen.pop("env", os.environ).items() if k != "PYTEST_CURRENT_TEST"}
    proc = subprocess.Popen([sys.executable, "-m", "flowdc", *args], env=env, **popen)
    try:
        wait_for_http(url, timeout, proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

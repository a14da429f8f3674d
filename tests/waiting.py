"""One way for a test to wait for something another process or thread makes happen."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T], timeout_s: float = 60.0, *, state: Callable[[], Any] | None = None,
             alive: Sequence[subprocess.Popen[Any]] = (), tolerate: tuple[type[Exception], ...] = (),
             every_s: float = 0.05) -> T:
    """`check()`'s first true value, asked every `every_s`: an AssertionError naming `what` (and
    `state()`) after `timeout_s`, or as soon as one of the `alive` processes has exited. An error
    of the `tolerate` kinds counts as not yet (a server still starting)."""
    deadline = time.monotonic() + timeout_s
    while True:
        for proc in alive:
            assert proc.poll() is None, f"{proc.args} exited with {proc.returncode} while waiting for {what}"
        try:
            found = check()
        except tolerate:
            found = None  # type: ignore[assignment]
        if found:
            return found
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}"
                                 + (f": {state()}" if state is not None else ""))
        time.sleep(every_s)

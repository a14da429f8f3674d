"""Run a coroutine to completion from sync code, whether or not the calling thread has a running loop.

A notebook's kernel keeps an event loop running in the main thread, so `asyncio.run()` there fails
with "cannot be called from a running event loop". The sync entry points (run_download, run_size,
flowdc.api.download, ...) go through `run_sync` instead: with no running loop it is `asyncio.run`;
inside one, the coroutine runs on a fresh loop in a helper thread while the caller waits. The caller's
loop is blocked meanwhile, so anything the download needs from that loop (servers started on it,
say) must be awaited through the async variant instead; the error text names it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def in_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def run_sync(make: Callable[[], Coroutine[Any, Any, T]], async_name: str) -> T:
    """Run `make()`'s coroutine to the end and return its result (or raise its exception).

    `make` builds the coroutine only in the thread that runs it, so nothing is created unawaited.
    async_name (e.g. "flowdc.api.download_async") is named in errors raised because of the loop.
    """
    if not in_running_loop():
        return asyncio.run(make())
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["value"] = asyncio.run(make())
        except BaseException as exc:  # handed to the caller's thread as it is
            box["error"] = exc

    helper = threading.Thread(target=work, name=f"flowdc-sync:{async_name}", daemon=True)
    helper.start()
    try:
        helper.join()
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"interrupted; the run goes on in a helper thread until it stops. In a running "
                                f"event loop, `await {async_name}(...)` lets Ctrl-C/cancel stop it") from None
    if "error" in box:
        raise box["error"]
    return box["value"]

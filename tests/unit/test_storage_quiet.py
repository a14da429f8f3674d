"""The fsspec I/O loop's handler for errors of abandoned tasks (store outages)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from fsspec.asyn import get_loop

from flowdc.storage import quiet_orphaned_connection_errors


def report_on_fsspec_loop(exc: BaseException) -> None:
    loop = get_loop()
    fut = asyncio.run_coroutine_threadsafe(_report(exc), loop)
    fut.result(5)


async def _report(exc: BaseException) -> None:
    asyncio.get_running_loop().call_exception_handler(
        {"message": "Task exception was never retrieved", "exception": exc})


def test_orphaned_connection_errors_go_to_debug_only(caplog: pytest.LogCaptureFixture) -> None:
    """A connection error of an abandoned write is not shown to the user (no traceback on
    stderr); any other orphaned error still is."""
    quiet_orphaned_connection_errors()
    time.sleep(0.1)  # the handler is installed on the loop's own thread
    with caplog.at_level(logging.DEBUG):
        report_on_fsspec_loop(ConnectionResetError("Cannot write to closing transport"))
        report_on_fsspec_loop(ValueError("a real bug"))
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [str(r.exc_info[1]) for r in errors if r.exc_info] == ["a real bug"]
    assert any("abandoned task" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)

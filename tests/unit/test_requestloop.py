"""The request loop's stop: a run stopped mid-flight (a lost lease, a signal) ends quietly."""

from __future__ import annotations

import asyncio
import gc
import logging

import aiohttp
import pytest

from flowdc.config import DownloadConfig
from flowdc.fetch import Outcome
from flowdc.requestloop import RequestLoop
from flowdc.scheduler import Job


def test_a_stopped_run_leaves_no_unretrieved_error_for_asyncio_to_log(caplog: pytest.LogCaptureFixture) -> None:
    """Stopped while every worker waits on a request, the workers are cancelled. The future that
    gathered them then holds a CancelledError; unless it is retrieved, asyncio logs it with a
    traceback when the future is collected, on a run that had already said why it stopped."""
    async def main() -> bool:
        loop = RequestLoop(DownloadConfig(), 4, Outcome)
        stop = asyncio.Event()
        never = asyncio.Event()

        async def feed() -> None:
            for i in range(8):
                loop.scheduler.add(Job(i, str(i), f"http://127.0.0.2/{i}", "127.0.0.2"))
            loop.scheduler.close()

        async def request(session: aiohttp.ClientSession, job: Job) -> Outcome:
            asyncio.get_running_loop().call_soon(stop.set)  # stop once the workers are in flight
            await never.wait()
            raise AssertionError("never answered")

        async def settle(job: Job, outcome: Outcome) -> None:
            raise AssertionError("nothing settles")

        return await loop.run(feed, request, settle, stop=stop)

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        assert asyncio.run(main()) is True
        gc.collect()
    assert "never retrieved" not in caplog.text, caplog.text

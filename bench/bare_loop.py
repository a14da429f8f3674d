"""The baseline FLOW-DC is measured against: the download loop a user would write by hand.

One ClientSession, one global semaphore of N, fixed-delay retries on 429/5xx and connection
errors that ignore Retry-After, each body written to a file. No per-host control at all.
It reads the manifest in batches so memory stays flat on large manifests, which is the least
a hand-written loop would do.

    python bench/bare_loop.py --input M.parquet --output DIR [--url url] [--concurrency 256]
                              [--timeout 30] [--retries 3] [--backoff 1.0]

Prints one JSON line: {ok, failed, elapsed_s, images_per_s, n_429, ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

FILES_PER_DIR = 10_000  # keep directories small enough for any filesystem


def iter_urls(path: str, column: str, batch_rows: int = 65_536) -> Iterator[str]:
    if path.lower().endswith(".csv"):
        reader = pcsv.open_csv(path)
        for batch in reader:
            yield from batch.column(column).to_pylist()
        return
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=[column]):
        yield from batch.column(0).to_pylist()


class BareLoop:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.output)
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()

    async def run(self) -> dict[str, object]:
        args = self.args
        self.out.mkdir(parents=True, exist_ok=True)
        sem = asyncio.Semaphore(args.concurrency)
        # The connector must not add a lower bound of its own (its default is 100).
        connector = aiohttp.TCPConnector(limit=args.concurrency, limit_per_host=0)
        timeout = aiohttp.ClientTimeout(total=args.timeout)
        start = time.monotonic()
        tasks: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            for index, url in enumerate(iter_urls(args.input, args.url)):
                await sem.acquire()  # bounds tasks in flight, so memory too
                task = asyncio.create_task(self.fetch(session, index, url or ""))
                tasks.add(task)
                task.add_done_callback(lambda t: (tasks.discard(t), sem.release()))
            if tasks:
                await asyncio.gather(*tasks)
        elapsed = time.monotonic() - start
        ok = self.counts["ok"]
        return {
            "ok": ok,
            "failed": self.counts["failed"],
            "elapsed_s": round(elapsed, 3),
            "images_per_s": round(ok / elapsed, 1) if elapsed > 0 else 0.0,
            "n_429": self.counts["n_429"],
            "retries": self.counts["retries"],
            "bytes": self.counts["bytes"],
            "errors": dict(self.errors),
        }

    async def fetch(self, session: aiohttp.ClientSession, index: int, url: str) -> None:
        reason = "unknown"
        for attempt in range(self.args.retries + 1):
            if attempt:
                self.counts["retries"] += 1
                await asyncio.sleep(self.args.backoff)
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        body = await resp.read()
                        self.save(index, body)
                        return
                    if resp.status == 429:
                        self.counts["n_429"] += 1
                    reason = f"http_{resp.status}"
                    if resp.status != 429 and resp.status < 500:
                        break  # 404 and friends will not get better
            except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError):
                reason = "bad_url"
                break
            except TimeoutError:
                reason = "timeout"
            except aiohttp.ClientError as exc:
                reason = type(exc).__name__
        self.counts["failed"] += 1
        self.errors[reason] += 1

    def save(self, index: int, body: bytes) -> None:
        folder = self.out / f"{index // FILES_PER_DIR:05d}"
        folder.mkdir(exist_ok=True)
        (folder / f"{index:09d}.img").write_bytes(body)  # blocking, as a simple loop would do
        self.counts["ok"] += 1
        self.counts["bytes"] += len(body)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Bare aiohttp download loop (benchmark baseline).")
    p.add_argument("--input", required=True, help="Parquet (or .csv) manifest.")
    p.add_argument("--output", required=True, help="Directory for the downloaded bodies.")
    p.add_argument("--url", default="url", help="URL column.")
    p.add_argument("--concurrency", type=int, default=256, help="Global requests in flight.")
    p.add_argument("--timeout", type=float, default=30.0, help="Seconds per request attempt.")
    p.add_argument("--retries", type=int, default=3, help="Retries after 429/5xx/connection errors.")
    p.add_argument("--backoff", type=float, default=1.0, help="Fixed seconds between attempts.")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    result = asyncio.run(BareLoop(parse_args(argv)).run())
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

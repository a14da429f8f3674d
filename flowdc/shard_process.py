"""webdataset's byte work in the write process: each body's digest and decode check, and the open
shard's tar members (flowdc/shard_child.py is the child's side).

Why: the webdataset writer's one thread held the GIL the event loop needs for each digest, header
walk, tar header and buffer copy, so on thumbnails the loop's core stalled behind it (the same
finding as imagefolder's, flowdc/write_process.py). Here the writer thread keeps every decision
(which shard, which member name, each record and the shard's parquet, when to sync and commit, the
ledger) and waits on the child, which costs it no GIL, while the child does the byte work.

How, per batch: the bodies are copied into one half of the ring, and the child checks them; the
members the writer then appends are sent as references to those bodies (the .json bytes as they
are) with the next batch's check, or at a flush. The halves alternate, so a batch's bodies
stay in place until the child wrote them: its answer to the next check says it did. The durability
rules stay the writer's (docs/resume.md): the child writes out at each flush, and the writer hands
the records to the ledger only after the child said the flush went through.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from flowdc import write_process
from flowdc.shard_child import MemberData
from flowdc.write_child import Written
from flowdc.write_process import ChildLink
from flowdc.writers.base import StoredSample

if TYPE_CHECKING:
    from flowdc.writers.webdataset import WebDatasetWriter

log = logging.getLogger(__name__)


class ShardLane:
    """When the webdataset writer's byte work moves to a write process: before the first request
    on a run known to be long (start_and_wait()), else once `start_after` samples were written
    here. Its calls come from the writer's thread: prepare() is the write queue's per-batch hook."""

    def __init__(self, writer: WebDatasetWriter, verify: str, start_after: int):
        self.writer, self.verify = writer, verify
        self.start_after = start_after
        self.process: ShardProcess | None = None
        self._written = 0
        self._tried = False

    def start(self) -> None:
        if self._tried:
            return
        self._tried = True
        try:
            self.process = ShardProcess(self.verify)
        except Exception as exc:  # no process here (a sandbox, no memfd): this thread keeps writing
            log.info("no write process (%s: %s): shards are written in a thread", type(exc).__name__, exc)
            return
        self.writer.use_process(self.process)

    def start_and_wait(self, timeout: float) -> None:
        """Start now and wait (up to `timeout`) until the child has loaded."""
        self.start()
        if self.process is not None:
            self.process.ready(timeout)

    def prepare(self, batch: list[StoredSample]) -> None:
        if self._written >= self.start_after:
            self.start()
        self._written += len(batch)
        if self.process is not None:
            self.process.check(batch)

    def shutdown(self) -> None:
        if self.process is not None:
            self.process.shutdown()


class ShardProcess:
    """The parent's side. Every call comes from the webdataset writer's one thread."""

    def __init__(self, verify: str, ring_bytes: int | None = None):
        ring_bytes = ring_bytes or write_process.RING_BYTES
        self._child = ChildLink(ring_bytes, ("shards", verify))
        self._half = ring_bytes // 2
        self._side = 0
        self._unsent: list[tuple[str, MemberData, int]] = []  # members appended since the last message
        self._checked: dict[int, tuple[int, bytes]] = {}  # id(body) -> (its index in the last checked batch, body)

    def check(self, samples: list[StoredSample]) -> None:
        """The batch's digests and decode checks: each record gets its sha256, size and format, or
        the sample is marked refused (the writer's check_sample then refuses it)."""
        ring, base, used = self._child.ring, self._side * self._half, 0
        items: list[tuple[int, Any]] = []
        for sample in samples:
            n = len(sample.body)
            if used + n <= self._half:
                ring[base + used : base + used + n] = sample.body
                items.append((base + used, n))
                used += n
            else:  # no room: the body goes through the pipe
                items.append((-1, sample.body))
        # With the last batch's members (whose bodies the other half still holds): one message.
        unsent, self._unsent = self._unsent, []
        results = self._child.ask(("check", items, unsent))
        self._side ^= 1
        self._checked = {id(sample.body): (i, sample.body) for i, sample in enumerate(samples)}
        for sample, result in zip(samples, results, strict=True):
            rec = sample.record
            rec.sha256 = rec.sha256 or result[1]
            if result[0] == "ok":
                if result[2] is not None:
                    rec.width, rec.height, rec.image_format = result[2]
                sample.checked = True
            else:
                sample.refused = result[2]

    def open_tar(self, path: str, offset: int) -> RemoteTar:
        """The child appends to the shard file at `path` from `offset` on (the writer opened it)."""
        self._send_unsent()
        self._child.tell(("open", path, offset))
        return RemoteTar(self, offset)

    def add(self, name: str, data: bytes, mtime: int) -> None:
        checked = self._checked.get(id(data))
        self._unsent.append((name, checked[0] if checked is not None and checked[1] is data else data, mtime))

    def written(self, request: str) -> int:
        """Ask the child to "flush" or "finish" the shard: its length so far, or OSError."""
        self._send_unsent()
        answer: Written = self._child.ask((request,))
        offset, failure = answer
        if failure is not None:
            raise OSError(f"the write process could not write the shard: {failure}")
        return offset or 0

    def drop(self) -> None:
        """The shard is given up: the child lets go of its file, writing nothing more."""
        self._unsent = []
        self._child.tell(("drop",))

    def ready(self, timeout: float | None) -> bool:
        return self._child.wait_ready(timeout)

    def shutdown(self) -> None:
        self._child.shutdown()

    @property
    def pid(self) -> int:
        return self._child.pid

    def _send_unsent(self) -> None:
        if self._unsent:
            unsent, self._unsent = self._unsent, []
            self._child.tell(("add", unsent))


class RemoteTar:
    """A shard's TarStream whose bytes the write process writes: the calls WebDatasetWriter makes."""

    def __init__(self, process: ShardProcess, offset: int):
        self._process = process
        self.offset = offset  # as of the last flush

    def add(self, name: str, data: bytes, mtime: int) -> None:
        self._process.add(name, data, mtime)

    def flush(self) -> None:
        self.offset = self._process.written("flush")

    def finish(self) -> None:
        self.offset = self._process.written("finish")

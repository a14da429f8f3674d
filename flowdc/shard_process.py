"""webdataset's byte work in the write process: each body's digest and decode check, and the open
shard's tar members (flowdc/shard_child.py is the child's side).

Why: a writer thread held the GIL the event loop needs for each digest, header walk, tar header and
buffer copy, and each of its system calls handed the GIL over and waited to get it back; on
thumbnails the loop's core stalled behind it (the same finding as imagefolder's,
flowdc/write_process.py). Here the writer runs on the event loop and keeps every decision (which
shard, which member name, each record and the shard's parquet, when to sync and commit, the ledger),
while the child does the byte work. Waiting for a batch's checks costs the loop nothing: their
answer is read when it comes, as imagefolder's are.

How, per batch: the bodies are copied into one half of the ring, and the child checks them; the
members the writer then appends are sent as references to those bodies (the .json bytes as they
are) with the next batch's check, or at a flush. The halves alternate, so a batch's bodies stay in
place until the child wrote them: its answer to the next check says it did. One batch is out at a
time, and nothing else is asked while it is: the child answers in the order asked, and a flush's
wait must not read a check's answer. The durability rules stay the writer's (docs/resume.md): the
child writes out at each flush, and the writer hands the records to the ledger only after the
child said the flush went through.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from flowdc import write_process
from flowdc.child_process import WriteProcessDied, link
from flowdc.shard_child import MemberData
from flowdc.write_child import Written, note_result
from flowdc.write_queue import write_batch
from flowdc.writers.base import StoredSample, StoreError

if TYPE_CHECKING:
    from flowdc.writers.webdataset import WebDatasetWriter


class ShardWriteLane:
    """The write queue's lane (flowdc/write_queue.py) for a local webdataset's shards: batches go
    to the write process to be checked, one at a time; each answered batch is written on the event
    loop by `write` (the writer's own write, whose members the process then appends)."""

    def __init__(self, writer: WebDatasetWriter, write: Callable[[StoredSample], None], verify: str,
                 ring_bytes: int | None = None):
        self.process = ShardProcess(verify, ring_bytes)
        try:
            writer.use_process(self.process)  # a shard open already is handed over where it stands
        except BaseException:
            self.process.shutdown()
            raise
        self._write = write
        self.room_bytes = self.process.half_bytes  # what waits for the lane fits the half a batch goes to
        self._waiting: collections.deque[list[StoredSample]] = collections.deque()
        self._out: list[StoredSample] | None = None

    @property
    def busy(self) -> bool:
        """A batch is out to be checked: the writer must not be called until it is answered."""
        return self._out is not None

    def fileno(self) -> int:
        return self.process.fileno()

    def ready(self, timeout: float | None) -> bool:
        return self.process.ready(timeout)

    def send(self, samples: list[StoredSample]) -> None:
        self._waiting.append(samples)
        if self._out is None:
            self._send_next()

    def answers(self) -> Iterator[list[StoreError]]:
        """Each batch checked since the last call, written: the losses of each, in the order sent."""
        while self._out is not None and self.process.answered():
            samples, self._out = self._out, None
            self.process.take_check(samples)
            errors = write_batch(self._write, samples)
            if self._waiting:
                self._send_next()
            yield errors

    def close(self) -> None:
        """Every batch answered: nothing to do. The writer's close ends the shard through the process;
        shutdown() stops it after that."""

    def shutdown(self) -> None:
        self.process.shutdown()

    def _send_next(self) -> None:
        samples = self._waiting.popleft()
        self.process.send_check(samples)
        self._out = samples


class ShardProcess:
    """The parent's side. Every call comes from where the writer runs (the event loop)."""

    def __init__(self, verify: str, ring_bytes: int | None = None):
        ring_bytes = ring_bytes or write_process.RING_BYTES
        self._child = link(ring_bytes, ("shards", verify))
        self.half_bytes = ring_bytes // 2
        self._side = 0
        self._checking = False  # a check is out: its answer is the next message
        self._unsent: list[tuple[str, MemberData, int]] = []  # members appended since the last message
        self._checked: dict[int, tuple[int, bytes]] = {}  # id(body) -> (its index in the last checked batch, body)

    def fileno(self) -> int:
        return self._child.conn.fileno()

    def send_check(self, samples: list[StoredSample]) -> None:
        """Send the batch to be checked (digests and decode checks); take_check() reads the answer."""
        self._not_checking()
        ring, base, used = self._child.ring, self._side * self.half_bytes, 0
        items: list[tuple[int, Any]] = []
        for sample in samples:
            n = len(sample.body)
            if used + n <= self.half_bytes:
                ring[base + used : base + used + n] = sample.body
                items.append((base + used, n))
                used += n
            else:  # no room: the body goes through the pipe
                items.append((-1, sample.body))
        # With the last batch's members (whose bodies the other half still holds): one message.
        unsent, self._unsent = self._unsent, []
        self._child.tell(("check", items, unsent))
        self._checking = True

    def answered(self) -> bool:
        """Whether the check sent is answered (its answer can be read without waiting)."""
        try:
            return self._checking and self._child.wait_ready(0) and self._child.conn.poll()
        except (EOFError, OSError):
            raise WriteProcessDied(self._child.died()) from None

    def take_check(self, samples: list[StoredSample]) -> None:
        """The answer to send_check(samples): each record gets its sha256, size and format, or the
        sample is marked refused (the writer's check_sample then refuses it)."""
        results = self._child.receive()
        self._checking = False
        self._side ^= 1
        self._checked = {id(sample.body): (i, sample.body) for i, sample in enumerate(samples)}
        for sample, result in zip(samples, results, strict=True):
            if note_result(sample.record, result):
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
            raise failure.as_error("the write process could not write the shard")
        return offset or 0

    def drop(self) -> None:
        """The shard is given up: the child lets go of its file, writing nothing more."""
        self._not_checking()
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
        self._not_checking()
        if self._unsent:
            unsent, self._unsent = self._unsent, []
            self._child.tell(("add", unsent))

    def _not_checking(self) -> None:
        # The child answers in the order asked: a request sent now would read the check's answer as its own.
        if self._checking:
            raise RuntimeError("the write process is checking a batch: wait for its answer first")


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

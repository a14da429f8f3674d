"""A local imagefolder's byte work in a process of its own: each sample's digest, header check, file
and archive member.

Why: on a run of thumbnails the event loop's thread is the limit, and storing took about a third of
its time on the realistic bench. With storing left out, flowdc ran as fast as the bare aiohttp loop
(docs/benchmarks.md). Writer threads did not help: each system call hands the GIL to the loop and
waits to get it back (flowdc/write_queue.py). A second process has a GIL of its own.

How: the parent (this module) names each file and keeps every record (the ledger, the archive's
list of members); the child (flowdc/write_child.py) only does the byte work, in the order it is
given. Bodies go through a ring of shared memory (a memfd): one copy, into pages that are used
again lap after lap (a page touched for the first time costs several times a reused one). Their
descriptions go through a socket, and the child answers each batch in turn. A body with no room in
the ring goes through the socket itself. The child ignores SIGINT and SIGTERM: the parent decides
when it stops, and it stops when its socket closes, so a stopped run still writes what it fetched.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from flowdc.child_process import WriteProcessDied, link
from flowdc.imagesig import NOT_DECODABLE
from flowdc.write_child import Item, Result, note_result
from flowdc.writers.base import SampleRefused, StoredSample, StoreError

if TYPE_CHECKING:
    from flowdc.archive import ArchiveBuilder
    from flowdc.writers.imagefolder import ImageFolderWriter

log = logging.getLogger(__name__)

RING_BYTES = 32 << 20  # room for bodies on their way: a few batches of thumbnails, a few dozen 1-MB images
# Rows a run must have left for a write process: one known to be long (the manifest's row count)
# starts it before its first request, any other once this many samples were written.
START_AFTER = 2048
READY_TIMEOUT_S = 5.0  # a run waits this long at most for its write process to load
CLOSE_TIMEOUT_S = 60.0  # the child's answer to "close" comes once it wrote what it was sent


class Ring:
    """Room for bodies in a circular buffer, freed batch by batch in the order taken (the child
    answers batches in order). Pure bookkeeping: offsets only."""

    def __init__(self, size: int):
        self.size = size
        self.head = self.tail = 0
        self.used = 0  # bytes from tail to head, with the gap a wrap left at the end of a lap
        self._open = 0  # bytes taken for the batch being filled
        self._batches: collections.deque[tuple[int, int]] = collections.deque()  # (bytes, end) per batch

    def take(self, n: int) -> int | None:
        """Where `n` bytes go, or None: no room for them now."""
        if n == 0:
            return 0
        if self.used == 0:
            self.head = self.tail = 0
        gap = 0
        if self.head < self.tail or (self.used and self.head == self.tail):  # wrapped: free is [head, tail)
            if self.head + n > self.tail:
                return None
            start = self.head
        elif self.head + n <= self.size:
            start = self.head
        elif n <= self.tail:
            start, gap = 0, self.size - self.head
        else:
            return None
        self.head = start + n
        self.used += gap + n
        self._open += gap + n
        return start

    def close_batch(self) -> None:
        self._batches.append((self._open, self.head))
        self._open = 0

    def free_batch(self) -> None:
        """The oldest batch was answered: its room is free."""
        taken, end = self._batches.popleft()
        self.used -= taken
        self.tail = end


class WriteProcess:
    """The parent's side: sends batches, reads the answers, and settles each sample as
    ImageFolderWriter.write and the decode check would have."""

    def __init__(self, writer: ImageFolderWriter, archive: ArchiveBuilder | None, verify: str,
                 ring_bytes: int | None = None):
        ring_bytes = ring_bytes or RING_BYTES
        self.writer, self.archive = writer, archive
        self.room_bytes = ring_bytes
        loan = archive.lend() if archive is not None else None
        self._lent = loan is not None
        self._child = link(ring_bytes, ("imagefolder", loan, verify))
        self._conn, self._buf = self._child.conn, self._child.ring
        self._ring = Ring(ring_bytes)
        self._sent: collections.deque[list[tuple[StoredSample, str, str | None]]] = collections.deque()
        self._closed = False

    @property
    def busy(self) -> bool:
        return bool(self._sent)

    def fileno(self) -> int:
        return self._conn.fileno()

    def send(self, samples: list[StoredSample]) -> None:
        items: list[Item] = []
        placed: list[tuple[StoredSample, str, str | None]] = []
        root = self.writer.dest.root
        for sample in samples:
            rel = self.writer.place(sample)
            member = self.archive.claim(rel) if self._lent and self.archive is not None else None
            body = sample.body
            n = len(body)
            at = self._ring.take(n)
            if at is None:
                items.append((f"{root}/{rel}", member, -1, body))
            else:
                self._buf[at:at + n] = body
                items.append((f"{root}/{rel}", member, at, n))
            placed.append((sample, rel, member))
        self._ring.close_batch()
        try:
            self._conn.send(items)
        except OSError:
            raise WriteProcessDied(self._child.died()) from None
        self._sent.append(placed)

    def answers(self) -> Iterator[list[StoreError]]:
        """The losses of each batch answered since the last call, in the order sent; raises
        WriteProcessDied when the child is gone."""
        if not self._child.wait_ready(0):
            return  # its answers come after
        while self._sent and self._conn.poll():
            try:
                results, archive_failure = self._conn.recv()
            except (EOFError, OSError):
                raise WriteProcessDied(self._child.died()) from None
            placed = self._sent.popleft()
            self._ring.free_batch()
            if archive_failure is not None and self.archive is not None:
                self.archive.take_back(None, archive_failure)
                self._lent = False
            errors = []
            for (sample, rel, member), result in zip(placed, results, strict=True):
                err = self._settle(sample, rel, member, result)
                if err is not None:
                    errors.append(err)
            yield errors

    def _settle(self, sample: StoredSample, rel: str, member: str | None, result: Result) -> StoreError | None:
        rec = sample.record
        if note_result(rec, result):
            self.writer.stored(sample, rel)
            return None
        if member is not None and self.archive is not None:
            self.archive.unclaim(rel)
        if result[0] == "refused":
            return SampleRefused(NOT_DECODABLE, result[2], rec)
        return StoreError(OSError(result[2], result[3]), [rec])

    def close(self) -> None:
        """Once every batch is answered: the child stops, and the archive's stream comes back here."""
        if self._closed:
            return
        self._closed = True
        try:
            self._conn.send(None)
            self._child.wait_ready(CLOSE_TIMEOUT_S)
            if not self._conn.poll(CLOSE_TIMEOUT_S):
                raise WriteProcessDied("the write process did not stop")
            offset, failure = self._conn.recv()
        except (EOFError, OSError):
            raise WriteProcessDied(self._child.died()) from None
        finally:
            self.shutdown()
        if self._lent and self.archive is not None:
            self.archive.take_back(offset, failure)

    def ready(self, timeout: float | None) -> bool:
        return self._child.wait_ready(timeout)

    def shutdown(self) -> None:
        """Stop the child whatever it is doing (a failed run); safe to call twice."""
        self._closed = True
        self._child.shutdown()

    @property
    def pid(self) -> int:
        return self._child.pid



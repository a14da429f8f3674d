"""A local imagefolder's byte work in a process of its own: each sample's digest, header check, file
and archive member.

Why: on a run of thumbnails the event loop's thread is the limit, and storing took about a third of
its time on the realistic bench. With storing left out, flowdc ran as fast as the bare aiohttp loop
(docs/benchmarks.md). Writer threads did not help: each system call hands the GIL to the loop and
waits to get it back (flowdc/write_queue.py). A second process has a GIL of its own.

How: the parent names each file and keeps every record (the ledger, the archive's list of members);
the child only does the byte work, in the order it is given. Bodies go through a ring of shared
memory (a memfd): one copy, into pages that are used again lap after lap (a page touched for the
first time costs several times a reused one). Their descriptions go through a pipe, and the child
answers each batch in turn. A body with no room in the ring goes through the pipe itself. The
child ignores SIGINT and SIGTERM: the parent decides when it stops, and it stops when its pipe
closes, so a stopped run still writes what it fetched.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import mmap
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from flowdc.errors import EXIT_FAILURE, FlowdcError
from flowdc.imageheader import header_size
from flowdc.localfiles import write_local
from flowdc.writers.tarstream import TarStream

if TYPE_CHECKING:
    from flowdc.archive import ArchiveBuilder
    from flowdc.writers.base import StoredSample, StoreError
    from flowdc.writers.imagefolder import ImageFolderWriter

log = logging.getLogger(__name__)

RING_BYTES = 32 << 20  # room for bodies on their way: a few batches of thumbnails, a few dozen 1-MB images
START_AFTER = 2048  # a run with fewer rows to fetch (or not known to have more) writes on the loop
CLOSE_TIMEOUT_S = 60.0  # the child's answer to "close" comes once it wrote what it was sent

# (final path, archive member or None, offset in the ring or -1, length or the body itself)
Item = tuple[str, str | None, int, Any]
# ("ok", sha256, (width, height, format) or None) | ("refused", sha256, why) | ("error", sha256, errno, message)
Result = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class ArchiveLoan:
    """The archive's stream, lent to the write process: it appends members from `offset` on."""

    path: str
    offset: int
    mtime: int


def available() -> bool:
    """Whether this platform has what the write process needs (a memfd, descriptor passing)."""
    return hasattr(os, "memfd_create") and (os.cpu_count() or 1) >= 2


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


class WriteProcessDied(FlowdcError, RuntimeError):
    """The write process is gone (killed, out of memory): samples it had not answered were not
    recorded, and a rerun fetches them again."""

    exit_code = EXIT_FAILURE


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
        fd = os.memfd_create("flowdc-ring", os.MFD_CLOEXEC)
        ours, theirs = socket.socketpair()
        proc: subprocess.Popen[bytes] | None = None
        try:
            os.ftruncate(fd, ring_bytes)
            self._map = mmap.mmap(fd, ring_bytes)
            proc = start_child(theirs.fileno(), fd)
            self._conn = Connection(ours.detach())
            self._conn.send((ring_bytes, loan, verify))
        except BaseException:
            ours.close()
            if proc is not None:
                proc.kill()
                proc.wait()
            raise
        finally:
            theirs.close()
            os.close(fd)
        assert proc is not None
        self._proc = proc
        self._buf = memoryview(self._map)
        self._ring = Ring(ring_bytes)
        self._sent: collections.deque[list[tuple[StoredSample, str, str | None]]] = collections.deque()
        self._closed = False

    def fileno(self) -> int:
        return self._conn.fileno()

    @property
    def busy(self) -> bool:
        return bool(self._sent)

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
            raise WriteProcessDied(self._died()) from None
        self._sent.append(placed)

    def answers(self) -> Iterator[list[StoreError]]:
        """The losses of each batch answered since the last call, in the order sent; raises
        WriteProcessDied when the child is gone."""
        while self._sent and self._conn.poll():
            try:
                results, archive_failure = self._conn.recv()
            except (EOFError, OSError):
                raise WriteProcessDied(self._died()) from None
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
        from flowdc.imagesig import NOT_DECODABLE
        from flowdc.writers.base import SampleRefused, StoreError

        rec = sample.record
        if rec.sha256 is None:
            rec.sha256 = result[1]
        if result[0] == "ok":
            if result[2] is not None:
                rec.width, rec.height, rec.image_format = result[2]
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
            if not self._conn.poll(CLOSE_TIMEOUT_S):
                raise WriteProcessDied("the write process did not stop")
            offset, failure = self._conn.recv()
        except (EOFError, OSError):
            raise WriteProcessDied(self._died()) from None
        finally:
            self.shutdown()
        if self._lent and self.archive is not None:
            self.archive.take_back(offset, failure)

    def shutdown(self) -> None:
        """Stop the child whatever it is doing (a failed run); safe to call twice."""
        self._closed = True
        self._conn.close()  # it stops at the end of its pipe
        try:
            self._proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._buf.release()
        self._map.close()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _died(self) -> str:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=1.0)
        return (f"the write process stopped (exit code {self._proc.returncode}); what it stored is kept: "
                "run the same command again to fetch the rest")


def start_child(conn_fd: int, ring_fd: int) -> subprocess.Popen[bytes]:
    """A fresh interpreter running main(), not multiprocessing's spawn: that one imports the
    parent's __main__ again, and a user's script without a main guard would start a second
    download in it. It imports the flowdc this process runs, and only the modules it needs."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = f"import sys; sys.path.insert(0, {root!r}); from flowdc.write_process import main; main()"
    return subprocess.Popen([sys.executable, "-c", code, str(conn_fd), str(ring_fd)], pass_fds=(conn_fd, ring_fd),
                            stdin=subprocess.DEVNULL)


# -- the child ------------------------------------------------------------------------------------
def main() -> None:
    """The write process: its pipe and ring are the descriptors named on its command line."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn, ring_fd = Connection(int(sys.argv[1])), int(sys.argv[2])
    try:
        ring_bytes, loan, verify = conn.recv()
    except EOFError:
        return
    ring = memoryview(mmap.mmap(ring_fd, ring_bytes))
    os.close(ring_fd)
    serve(conn, ring, loan, verify)


def serve(conn: Connection, ring: memoryview, loan: ArchiveLoan | None, verify: str) -> None:
    """Answer each batch with one result per sample, until the parent says stop (None) or its pipe
    closes. A thread reads the pipe all the time: were the parent blocked sending a batch while
    this process was blocked sending an answer the parent had no time to read, both would wait for
    good."""
    batches: queue.SimpleQueue[Any] = queue.SimpleQueue()
    threading.Thread(target=_read_all, args=(conn, batches), name="flowdc-write-reader", daemon=True).start()
    archive = _Archive(loan) if loan is not None else None
    while True:
        items = batches.get()
        if items is _END:
            return
        if items is None:
            conn.send(archive.close() if archive is not None else (None, None))
            return
        results = [_store(final, member, ring[at:at + n] if at >= 0 else n, verify, archive)
                   for final, member, at, n in items]
        conn.send((results, archive.failure if archive is not None else None))


_END = object()  # the pipe closed


def _read_all(conn: Connection, batches: queue.SimpleQueue[Any]) -> None:
    try:
        while True:
            message = conn.recv()
            batches.put(message)
            if message is None:
                return
    except (EOFError, OSError):
        batches.put(_END)


def _store(final: str, member: str | None, body: Any, verify: str, archive: _Archive | None) -> Result:
    """One sample, in the order the writer threads take: digest, decode check, file, archive member."""
    sha = hashlib.sha256(body).hexdigest()
    info = None
    if verify != "none":
        info = header_size(body)
        if info is None:  # not a plain JPEG or PNG: Pillow judges
            from flowdc.imagecheck import NotDecodable, inspect_image

            try:
                image = inspect_image(bytes(body), verify)
            except NotDecodable as exc:
                return ("refused", sha, str(exc))
            info = None if image is None else (image.width, image.height, image.format)
    try:
        write_local(final, body)
    except OSError as exc:
        return ("error", sha, exc.errno, f"{exc.strerror or exc}: {final}")
    if member is not None and archive is not None:
        archive.add(member, body)
    return ("ok", sha, info)


class _Archive:
    """The archive's stream, borrowed: members appended from where the parent left it."""

    def __init__(self, loan: ArchiveLoan):
        self.failure: str | None = None
        self._mtime = loan.mtime
        self._file = open(loan.path, "r+b")  # noqa: SIM115 (closed by close())
        self._file.seek(loan.offset)
        self._tar: TarStream | None = TarStream(self._file, offset=loan.offset)

    def add(self, member: str, body: Any) -> None:
        if self._tar is None:
            return
        try:
            self._tar.add(member, body, self._mtime)
        except OSError as exc:
            self.failure, self._tar = f"{type(exc).__name__}: {exc}", None

    def close(self) -> tuple[int | None, str | None]:
        """Write out what is buffered: (the stream's length, None), or (None, why it failed)."""
        tar, self._tar = self._tar, None
        try:
            if tar is not None:
                tar.flush()
                self._file.flush()
        except OSError as exc:
            self.failure, tar = f"{type(exc).__name__}: {exc}", None
        finally:
            self._file.close()
        return (tar.offset, None) if tar is not None else (None, self.failure)


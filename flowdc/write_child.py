"""The write process itself: started by flowdc.write_process, it takes each sample's digest, runs
the header check, writes the file and appends the archive member, in the order given. In its
shard role (flowdc/shard_child.py, for webdataset) it checks bodies and appends shard members.

It loads only what that needs (no aiohttp, pyarrow or fsspec): its start is part of the run's time.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import queue
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from flowdc.imagecheck import NotDecodable, inspect_image
from flowdc.localfiles import write_local
from flowdc.writers.tarstream import TarStream

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


def main() -> None:
    """The write process: its pipe and ring are the descriptors named on its command line; the
    first message names its role ("imagefolder" or "shards") and that role's settings."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn, ring_fd = Connection(int(sys.argv[1])), int(sys.argv[2])
    try:
        ring_bytes, role, *settings = conn.recv()
    except EOFError:
        return
    ring = memoryview(mmap.mmap(ring_fd, ring_bytes))
    os.close(ring_fd)
    serve_role: Callable[..., None] = serve
    if role == "shards":
        from flowdc.shard_child import serve_shards

        serve_role = serve_shards
    try:
        conn.send("ready")  # loaded: a run waits for this before its first request (download.py)
    except OSError:
        return
    serve_role(conn, ring, *settings)


def serve(conn: Connection, ring: memoryview, loan: ArchiveLoan | None, verify: str) -> None:
    """Answer each batch with one result per sample, until the parent says stop (None) or its pipe
    closes. A thread reads the pipe all the time: were the parent blocked sending a batch while
    this process was blocked sending an answer the parent had no time to read, both would wait for
    good."""
    batches: queue.SimpleQueue[Any] = queue.SimpleQueue()
    threading.Thread(target=_read_all, args=(conn, batches), name="flowdc-write-reader", daemon=True).start()
    archive = _Archive(loan) if loan is not None else None
    try:
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
    except OSError:
        return  # the parent is gone or gave up on us (a failed run): nobody to answer, nothing to say


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
    checked = check_body(body, verify)
    if checked[0] != "ok":
        return checked
    sha = checked[1]
    try:
        write_local(final, body)
    except OSError as exc:
        return ("error", sha, exc.errno, f"{exc.strerror or exc}: {final}")
    if member is not None and archive is not None:
        archive.add(member, body)
    return checked


def check_body(body: Any, verify: str) -> Result:
    """A body's digest and decode check: ("ok", sha256, (width, height, format) or None) or
    ("refused", sha256, why)."""
    sha = hashlib.sha256(body).hexdigest()
    try:
        image = inspect_image(body, verify)  # a view of the ring: the header walk and Pillow read it as is
    except NotDecodable as exc:
        return ("refused", sha, str(exc))
    return ("ok", sha, None if image is None else (image.width, image.height, image.format))


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


"""Tar members as bytes, for writing a tar stream without the tarfile module's per-member cost.

tarfile builds each header through several layers of Python; at thousands of samples a second
that work, done in the writer thread, holds the GIL the event loop needs. A plain ustar header is
512 bytes with a checksum, so common members (short ASCII names, sizes under 8 GiB) are built
here directly; any other name goes through tarfile's own PAX encoding.
"""

from __future__ import annotations

import os
import tarfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO

BLOCK = 512
RECORD = 20 * BLOCK  # tar readers expect the archive padded to whole records
SPOOL_GROUP_BYTES = 1 << 20  # a TarSpool hands its writer thread members this many bytes at a time...
SPOOL_GROUP_PIECES = 900  # ... or this many pieces (a writev takes at most IOV_MAX, 1024 on Linux)
SPOOL_GROUPS_AHEAD = 4  # groups handed over and not yet written, before add() waits for one
USTAR_NAME_MAX = 100
USTAR_SIZE_LIMIT = 8**11  # 11 octal digits


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


_MODE_TO_GID = _octal(0o644, 8) + _octal(0, 8) + _octal(0, 8)
_AFTER_MTIME = b"".join((
    b"0",  # regular file
    b"\0" * 100,  # link name
    b"ustar\x0000",
    b"\0" * 64,  # user and group names
    b"\0" * 16,  # device numbers: none for a regular file
    b"\0" * 167,  # prefix and padding
))  # fmt: skip
# The checksum sums every header byte with its own field read as spaces; the fixed parts' share
# is summed once here.
_FIXED_SUM = sum(_MODE_TO_GID) + sum(b" " * 8) + sum(_AFTER_MTIME)


def _ustar_header(name: bytes, size: int, mtime: int) -> bytes:
    size_field, mtime_field = _octal(size, 12), _octal(mtime, 12)
    checksum = _FIXED_SUM + sum(name) + sum(size_field) + sum(mtime_field)
    return b"".join((
        name.ljust(USTAR_NAME_MAX, b"\0"), _MODE_TO_GID, size_field, mtime_field,
        b"%06o\0 " % checksum, _AFTER_MTIME,
    ))  # fmt: skip


def member_header(name: str, size: int, mtime: int) -> bytes:
    """The header block(s) of a regular file member (mode 644); its data follows, padded by `padding`."""
    raw = name.encode("utf-8", "surrogateescape")
    if raw.isascii() and len(raw) <= USTAR_NAME_MAX and size < USTAR_SIZE_LIMIT:
        return _ustar_header(raw, size, mtime)
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o644
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def member(name: str, data: bytes, mtime: int) -> tuple[bytes, bytes, bytes]:
    """A regular file member as written: its header, its data, and the padding to a whole block."""
    return member_header(name, len(data), mtime), data, padding(len(data))


def end_of_archive(offset: int) -> bytes:
    """Two zero blocks, then zeros up to a whole record, for a stream `offset` bytes long so far."""
    end = offset + 2 * BLOCK
    return b"\0" * (2 * BLOCK + (-end % RECORD))


class TarStream:
    """A tar archive written front to back into a binary file.

    Small pieces (headers, JSON, small images) are gathered into large writes: each write is a
    system call that hands the GIL to the event loop and back. A piece too large for what is left
    of the buffer, and over half its size, goes straight to the file: copying a large body through
    the buffer costs more than the call saves. The buffer is allocated once per archive: growing
    and freeing one per write meant fresh pages, and their faults cost more than the copies.
    """

    def __init__(self, file: IO[bytes], write_bytes: int = 1 << 20, offset: int = 0):
        self._file = file
        self._buffer = memoryview(bytearray(write_bytes))
        self._used = 0
        self.offset = offset  # bytes of the archive so far, buffered ones included (a resumed one: its start)

    def add(self, name: str, data: bytes, mtime: int) -> None:
        for piece in member(name, data, mtime):
            self._put(piece)

    def finish(self) -> None:
        """End the archive and write out everything; the caller closes the file."""
        self._put(end_of_archive(self.offset))
        self.flush()

    def _put(self, data: bytes) -> None:
        size = len(data)
        self.offset += size
        if self._used + size > len(self._buffer):
            self.flush()
            if size > len(self._buffer) // 2:
                self._file.write(data)
                return
        self._buffer[self._used : self._used + size] = data
        self._used += size

    def flush(self) -> None:
        """Hand the buffered bytes to the file (whole members only, when called between add()s)."""
        if self._used:
            # The file may not keep the view: a write is done with its argument when it returns.
            self._file.write(self._buffer[: self._used])
            self._used = 0


class TarSpool:
    """A tar archive written front to back into a file descriptor by a thread of its own.

    For a file the event loop appends to (the imagefolder archive): the loop builds each member's
    header and hands the thread groups of pieces, which it writes with writev, never copying a
    body in Python. The kernel's copy into the file (a tenth of a defaults run's CPU on the
    realistic bench) then runs beside the loop. A failed write raises OSError from a later add()
    or from finish(); close() waits for the thread either way, before the caller closes the file.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="flowdc-tarspool")
        self._group: list[bytes] = []
        self._group_bytes = 0
        self._ahead: deque[Future[None]] = deque()
        self.offset = 0  # bytes of the archive so far, handed over or not

    def add(self, name: str, data: bytes, mtime: int) -> None:
        pieces = member(name, data, mtime)
        self._group += pieces
        size = sum(map(len, pieces))
        self.offset += size
        self._group_bytes += size
        if self._group_bytes >= SPOOL_GROUP_BYTES or len(self._group) >= SPOOL_GROUP_PIECES:
            self._hand_over()

    def finish(self) -> None:
        """End the archive and wait until every byte is written; raises OSError if any write failed."""
        end = end_of_archive(self.offset)
        self._group.append(end)
        self.offset += len(end)
        self._hand_over()
        while self._ahead:
            self._ahead.popleft().result()

    def close(self) -> None:
        """Stop the thread once its writes are done (failed or not): the file may be closed then."""
        self._thread.shutdown(wait=True, cancel_futures=True)

    def _hand_over(self) -> None:
        group, self._group, self._group_bytes = self._group, [], 0
        while self._ahead and (self._ahead[0].done() or len(self._ahead) >= SPOOL_GROUPS_AHEAD):
            self._ahead.popleft().result()  # a failed write raises here
        self._ahead.append(self._thread.submit(write_all, self._fd, group))


def write_all(fd: int, pieces: list[bytes]) -> None:
    """writev until every piece is written (a write may take only part of them)."""
    views = [memoryview(piece) for piece in pieces if piece]
    first = 0
    while first < len(views):
        written = os.writev(fd, views[first : first + SPOOL_GROUP_PIECES])
        while written and first < len(views):
            if written >= len(views[first]):
                written -= len(views[first])
                first += 1
            else:
                views[first] = views[first][written:]
                written = 0

"""Tar members as bytes, for writing a tar stream without the tarfile module's per-member cost.

tarfile builds each header through several layers of Python; at thousands of samples a second
that work, done in the writer thread, holds the GIL the event loop needs. A plain ustar header is
512 bytes with a checksum, so common members (short ASCII names, sizes under 8 GiB) are built
here directly; any other name goes through tarfile's own PAX encoding.
"""

from __future__ import annotations

import tarfile
from typing import IO

BLOCK = 512
RECORD = 20 * BLOCK  # tar readers expect the archive padded to whole records
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
        self._put(member_header(name, len(data), mtime))
        self._put(data)
        self._put(padding(len(data)))

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

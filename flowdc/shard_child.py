"""The write process in its shard role (flowdc/shard_process.py is the parent's side): it checks
each batch's bodies (digest, decode check) and appends the open shard's members, in the order
asked. The shard file is the parent's: it names the file and the offset to append from, and says
when to write out (flush) and when to end the archive (finish)."""

from __future__ import annotations

import os
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from flowdc.write_child import check_body
from flowdc.writers.tarstream import TarStream

# A member's data: the index of a body in the last checked batch, or the bytes themselves.
MemberData = int | bytes
# What "flush" and "finish" answer: (the archive's length so far, None) or (None, why writing failed)
Written = tuple[int | None, str | None]


def serve_shards(conn: Connection, ring: memoryview, verify: str) -> None:
    """Answer "check" (which brings the members appended since the last message), "flush" and
    "finish"; "open", "add" and "drop" need no answer. Stops when
    told (None) or when its pipe closes. Nothing is sent unasked, so the parent, which waits for
    each answer before it sends again, and this process can never both block on a send."""
    shard = _OpenShard()
    bodies: list[Any] = []  # the last checked batch's bodies: what "add" refers to
    try:
        while (message := conn.recv()) is not None:
            kind = message[0]
            if kind == "check":  # the last batch's members first: their bodies are the last checked
                _add(shard, message[2], bodies)
                bodies = [ring[at:at + n] if at >= 0 else n for at, n in message[1]]
                conn.send([check_body(body, verify) for body in bodies])
            elif kind == "add":
                _add(shard, message[1], bodies)
            elif kind == "open":
                shard.open(message[1], message[2])
            elif kind == "flush":
                conn.send(shard.flush())
            elif kind == "finish":
                conn.send(shard.finish())
            elif kind == "drop":
                shard.close()
    except (EOFError, OSError):
        pass  # the parent is gone or gave up on us: nobody to answer
    finally:
        shard.close()


def _add(shard: _OpenShard, members: list[tuple[str, MemberData, int]], bodies: list[Any]) -> None:
    for name, data, mtime in members:
        shard.add(name, bodies[data] if isinstance(data, int) else data, mtime)


class _OpenShard:
    """The shard being appended to. A failed write is kept and answered at the next flush or finish:
    the parent then drops the shard, as it does when its own writes fail."""

    def __init__(self) -> None:
        self._file: Any = None
        self._tar: TarStream | None = None
        self._failure: str | None = None

    def open(self, path: str, offset: int) -> None:
        self.close()
        try:
            self._file = _WholeWrites(os.open(path, os.O_WRONLY), offset)
            self._tar = TarStream(self._file, offset=offset)
        except OSError as exc:
            self._fail(exc)

    def add(self, name: str, data: Any, mtime: int) -> None:
        self._write(lambda tar: tar.add(name, data, mtime))

    def flush(self) -> Written:
        self._write(TarStream.flush)
        return self._answer()

    def finish(self) -> Written:
        self._write(TarStream.finish)
        answer = self._answer()
        self.close()
        return answer

    def _write(self, step: Callable[[TarStream], None]) -> None:
        if self._tar is None:  # not open, or failed already
            return
        try:
            step(self._tar)
        except OSError as exc:
            self._fail(exc)

    def close(self) -> None:
        """Let go of the file as it stands (what TarStream still buffers is dropped)."""
        file, self._file, self._tar = self._file, None, None
        self._failure = None
        if file is not None:
            file.close()

    def _fail(self, exc: OSError) -> None:
        self._failure, self._tar = f"{type(exc).__name__}: {exc}", None

    def _answer(self) -> Written:
        if self._failure is not None:
            return (None, self._failure)
        return (self._tar.offset if self._tar is not None else None, None)



class _WholeWrites:
    """A file that writes each piece whole or raises, and buffers nothing: TarStream gathers the
    writes, and a dropped shard must leave nothing behind to write. (A raw file object may write
    part of a piece near a size limit or a full disk, and say so only in its return value.)"""

    def __init__(self, fd: int, offset: int):
        self._fd = fd
        os.lseek(fd, offset, os.SEEK_SET)

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        while view:
            view = view[os.write(self._fd, view):]
        return len(data)

    def close(self) -> None:
        os.close(self._fd)

"""The write process in its shard role (flowdc/shard_process.py is the parent's side): it checks
each batch's bodies (digest, decode check) and appends the open shard's members, in the order
asked. The shard file is the parent's: it names the file and the offset to append from, and says
when to write out (flush) and when to end the archive (finish)."""

from __future__ import annotations

from multiprocessing.connection import Connection
from typing import Any

from flowdc.write_child import BorrowedTar, WriteFailure, Written, check_body

# A member's data: the index of a body in the last checked batch, or the bytes themselves.
MemberData = int | bytes


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
    """The shard being appended to, if any. A failed write (or open) is answered at the next flush
    or finish: the parent then drops the shard, as it does when its own writes fail."""

    def __init__(self) -> None:
        self._tar: BorrowedTar | None = None
        self._failure: WriteFailure | None = None  # why the shard could not be opened

    def open(self, path: str, offset: int) -> None:
        self.close()
        try:
            self._tar = BorrowedTar(path, offset)
        except OSError as exc:
            self._failure = WriteFailure.of(exc)

    def add(self, name: str, data: Any, mtime: int) -> None:
        if self._tar is not None:
            self._tar.add(name, data, mtime)

    def flush(self) -> Written:
        return self._tar.flush() if self._tar is not None else (None, self._failure)

    def finish(self) -> Written:
        answer = self._tar.finish() if self._tar is not None else (None, self._failure)
        self.close()
        return answer

    def close(self) -> None:
        tar, self._tar, self._failure = self._tar, None, None
        if tar is not None:
            tar.close()

"""Local files written whole or not at all: a hidden temporary beside the final name, then a rename.

Kept apart from flowdc.storage (fsspec, aiohttp) so that the write process (flowdc.write_process)
loads only what it uses.
"""

from __future__ import annotations

import contextlib
import itertools
import os

TMP_MARK = ".tmp-"
TMP_NAME_ROOM = 32  # bytes temporary_name adds to a name, at most: a dot, the mark, a pid and a count
_counter = itertools.count()
# os.getpid() is a system call each time (glibc stopped caching it), one per file written; a
# forked child (a resize pool's worker) learns its own.
_pid = os.getpid()


def _refresh_pid() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_refresh_pid)


_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


def write_local(final: str, data: bytes) -> None:
    """open_atomic's local write for a whole body at once, in as few system calls as it takes:
    imagefolder writes one per sample, and each call hands the GIL to the event loop and back.
    The folder is made only when the temporary cannot be created (its first file, or removed)."""
    parent, _, name = final.rpartition("/")
    tmp = f"{parent}/{temporary_name(name)}"
    try:
        fd = os.open(tmp, _NEW_FILE, 0o666)
    except FileNotFoundError:
        os.makedirs(parent, exist_ok=True)
        fd = os.open(tmp, _NEW_FILE, 0o666)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def temporary_name(name: str) -> str:
    """A hidden name beside `name` that remove_temporaries() knows as a killed run's leftover."""
    return f".{name}{TMP_MARK}{_pid}-{next(_counter)}"


def link_or_replace(tmp: str, final: str, *, exclusive: bool) -> None:
    """Give the local file `tmp` the name `final`: exclusive never replaces an existing file."""
    if exclusive:
        _link_exclusive(tmp, final)
    else:
        os.replace(tmp, final)


def _link_exclusive(tmp: str, final: str) -> None:
    """Give `tmp` the name `final` unless that name exists (FileExistsError)."""
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (some network and FUSE file systems): check, then rename
        if os.path.lexists(final):
            raise FileExistsError(final) from None
        os.replace(tmp, final)


def local_folder_problem(output: str) -> str | None:
    """Why a local output cannot be a folder (a file sits at it or above it), or None.

    Remote stores have no such conflict: an object and a prefix of the same name live side by side.
    """
    if "://" in output and not output.startswith("file://"):
        return None
    target = path = os.path.abspath(output.removeprefix("file://"))
    while not os.path.isdir(path):
        if os.path.exists(path):
            return "is a file, not a folder" if path == target else f"{path} is a file, not a folder"
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent
    return None


def local_file_problem(path: str) -> str | None:
    """Why a file cannot be written at a local path (a store's URL, a folder sits at it, a file above
    it), or None."""
    if "://" in path and not path.startswith("file://"):
        return "a local path is needed (the file is written here; copy it to the store after)"
    target = os.path.abspath(path.removeprefix("file://"))
    if os.path.isdir(target):
        return "is a folder, not a file"
    parent = os.path.dirname(target)
    problem = local_folder_problem(parent)
    return f"{parent} {problem}" if problem and problem.startswith("is ") else problem

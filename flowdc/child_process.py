"""The write process's start and its link to the parent (its socket and its ring of shared memory),
kept apart from the rest of the write process so that nothing heavy comes with it.

Why apart: a fresh interpreter takes 50-70 ms to load what the child needs, and a run known to be
long waits for it before its first request (flowdc/download.py says why). The CLI knows enough to
guess that a download will want one before it imports the download's modules (aiohttp, pyarrow,
numpy: a few hundred ms), so it starts the child first (`start_early`) and the two load side by
side, on two cores. The run then takes that child (`link`) instead of starting its own; a guess
that was wrong costs a child that loaded and is sent away (`discard_early`).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from flowdc.errors import EXIT_FAILURE, FlowdcError

if TYPE_CHECKING:
    from flowdc.config import DownloadConfig

# A manifest file this big has about a thousand rows or more: a run long enough to want a write
# process (write_process.START_AFTER rows), or close to it.
EARLY_START_MIN_INPUT_BYTES = 64 * 1024


class WriteProcessDied(FlowdcError, RuntimeError):
    """The write process is gone (killed, out of memory): samples it had not answered were not
    recorded, and a rerun fetches them again."""

    exit_code = EXIT_FAILURE


def available() -> bool:
    """Whether the write process can run here and help: a memfd (Linux) and a second core."""
    return hasattr(os, "memfd_create") and (os.cpu_count() or 1) >= 2


class ChildLink:
    """A write process and what links the parent to it: its socket and the ring both map. The
    child loads, then waits for its first message (`begin`), which names its role and settings
    and the ring's size (flowdc.write_child.main)."""

    def __init__(self) -> None:
        self._ring_fd = os.memfd_create("flowdc-ring", os.MFD_CLOEXEC)
        ours, theirs = socket.socketpair()
        try:
            self._proc = start_child(theirs.fileno(), self._ring_fd)
        except BaseException:
            ours.close()
            os.close(self._ring_fd)
            raise
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())
        self._map: mmap.mmap | None = None
        self.ring = memoryview(b"")
        self._ready = False

    def begin(self, ring_bytes: int, role: tuple[Any, ...]) -> None:
        """Size and map the ring, then tell the child its role and settings."""
        try:
            os.ftruncate(self._ring_fd, ring_bytes)
            self._map = mmap.mmap(self._ring_fd, ring_bytes)
        except BaseException:
            self.shutdown()
            raise
        self._close_ring_fd()  # the map keeps the memory; the child has its own descriptor
        self.ring = memoryview(self._map)
        self.tell((ring_bytes, *role))

    def running(self) -> bool:
        return self._proc.poll() is None

    def wait_ready(self, timeout: float | None) -> bool:
        """Whether the child has loaded what its role needs (its first message says so), waiting up
        to `timeout` seconds (None: for good) for it to say so."""
        if not self._ready:
            try:
                if not self.conn.poll(timeout):
                    return False
                self.conn.recv()
            except (EOFError, OSError):
                raise WriteProcessDied(self.died()) from None
            self._ready = True
        return True

    def ask(self, message: Any) -> Any:
        """Send a request and wait for its answer."""
        self.tell(message)
        return self.receive()

    def receive(self) -> Any:
        """The next answer, waited for."""
        try:
            self.wait_ready(None)
            return self.conn.recv()
        except (EOFError, OSError):
            raise WriteProcessDied(self.died()) from None

    def tell(self, message: Any) -> None:
        """Send what needs no answer."""
        try:
            self.conn.send(message)
        except OSError:
            raise WriteProcessDied(self.died()) from None

    def shutdown(self) -> None:
        """Stop the child whatever it is doing; safe to call twice."""
        self.conn.close()  # it stops at the end of its pipe
        try:
            self._proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._map is not None and not self._map.closed:
            self.ring.release()
            self._map.close()
        self._close_ring_fd()  # a child sent away before its role

    def _close_ring_fd(self) -> None:
        fd, self._ring_fd = self._ring_fd, -1
        if fd >= 0:
            os.close(fd)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def died(self) -> str:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=1.0)
        return (f"the write process stopped (exit code {self._proc.returncode}); what it stored is kept: "
                "run the same command again to fetch the rest")


def start_child(conn_fd: int, ring_fd: int) -> subprocess.Popen[bytes]:
    """A fresh interpreter running main(), not multiprocessing's spawn: that one imports the
    parent's __main__ again, and a user's script without a main guard would start a second
    download in it. It imports the flowdc this process runs, and only the modules it needs."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = f"import sys; sys.path.insert(0, {root!r}); from flowdc.write_child import main; main()"
    return subprocess.Popen([sys.executable, "-c", code, str(conn_fd), str(ring_fd)], pass_fds=(conn_fd, ring_fd),
                            stdin=subprocess.DEVNULL)


_early: ChildLink | None = None
_early_lock = threading.Lock()


def link(ring_bytes: int, role: tuple[Any, ...]) -> ChildLink:
    """A write process in `role`: the one started early if it is still there, else a new one."""
    global _early
    with _early_lock:
        child, _early = _early, None
    if child is not None and not child.running():
        child.shutdown()
        child = None
    if child is None:
        child = ChildLink()
    child.begin(ring_bytes, role)
    return child


def start_early() -> None:
    """Start a write process now, for the next `link` to take."""
    global _early
    with _early_lock:
        if _early is None:
            _early = ChildLink()


def discard_early() -> None:
    """Send away a write process started early that no run took."""
    global _early
    with _early_lock:
        child, _early = _early, None
    if child is not None:
        child.shutdown()


def worth_starting_early(cfg: DownloadConfig) -> bool:
    """A guess, from the options and the manifest file's size alone, that this download will want
    a write process: a local output written on the event loop (no resizing, no full decode, no
    staged shards, no gzip archive) from a manifest big enough. The run decides for itself."""
    if not available() or cfg.verify == "full" or cfg.resize_mode != "no" or cfg.encode_format != "keep":
        return False
    if cfg.cloud_tool or ("://" in cfg.output and not cfg.output.startswith("file://")):
        return False
    if cfg.output_format == "imagefolder" and cfg.create_tar and cfg.archive_format != "tar":
        return False
    try:
        return os.path.getsize(cfg.input) >= EARLY_START_MIN_INPUT_BYTES
    except (OSError, TypeError, ValueError):
        return False  # not a local file (a URL, a glob): no guess

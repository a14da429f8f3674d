"""One writer per output: an OS lock on a local output, a lease object on an object store.

Local: `flock` on OUTPUT/_flowdc/lock, held for the run's life. The kernel drops it when the
process ends, however it ends (kill -9 included), so a dead run never blocks the next. The file
stays: deleting it would let a second run lock a new file while the first still holds the old.

Object stores: OUTPUT/_flowdc/lease.json names the holder (owner, host, pid, run id, started,
heartbeat, ttl_s, and the process space it runs in). It is created only if absent and renewed
every ttl/3 only if unchanged (see flowdc.conditional for what each store enforces). A lease whose
heartbeat is older than its ttl_s belongs to a dead run and is taken over; so is, at once, a lease
of the same run id (a resubmitted task), and one whose holder ran in this process space (this
kernel's boot, this pid namespace: the same machine and container) and whose pid is gone (a run
killed with kill -9, rerun by hand). The heartbeat compares wall clocks across hosts: they must
agree to well within the TTL.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from flowdc import __version__
from flowdc.errors import OutputInUseError
from flowdc.storage import Destination

LOCK_FILE = "_flowdc/lock"
LEASE_FILE = "_flowdc/lease.json"
ACQUIRE_TRIES = 5


@dataclass
class Holder:
    run_id: str
    host: str
    pid: int
    started: float
    heartbeat: float
    ttl_s: float
    owner: str = "flowdc"
    version: str = __version__
    space: str = ""  # process_space() of the holder ("": unknown, never judged from here)

    @classmethod
    def me(cls, run_id: str, ttl_s: float) -> Holder:
        now = time.time()
        return cls(run_id, socket.gethostname(), os.getpid(), now, now, ttl_s, space=process_space())

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def parse(cls, data: bytes) -> Holder | None:
        try:
            d = json.loads(data)
            return cls(str(d["run_id"]), str(d["host"]), int(d["pid"]), float(d["started"]),
                       float(d.get("heartbeat", d["started"])), float(d.get("ttl_s", 0.0)),
                       space=str(d.get("space", "")))
        except (ValueError, KeyError, TypeError):
            return None

    def gone(self) -> bool:
        """The holder ran in this process space and its process no longer exists. (A pid taken
        again since reads as alive: the lease then waits for its TTL, as one from elsewhere does.)"""
        return bool(self.space) and self.space == process_space() and process_gone(self.pid)

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(self.started))
        return f"run {self.run_id}, pid {self.pid} on host {self.host}, started {started}"


def process_gone(pid: int) -> bool:
    """No process of this pid runs in this pid namespace (one that is not ours to signal exists)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return _exited(pid)


def _exited(pid: int) -> bool:
    """The process has exited and waits to be reaped (a zombie): in a container whose first process
    reaps nothing, a killed run stays one, and its output was refused as in use."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:][:1] == b"Z"  # the state follows the command name in parentheses


def process_space() -> str:
    """Which processes a pid names here: this kernel's boot and this pid namespace ("" where Linux's
    /proc does not say). Two containers on one machine share the boot but not the namespace."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            boot = fh.read().strip()
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


def in_use(display: str, holder: Holder | None, extra: str = "") -> OutputInUseError:
    who = holder.describe() if holder else "a run that did not say who it is"
    return OutputInUseError(f"{display} is in use by another flowdc run ({who}){extra}; "
                            "wait for it to finish, stop it, or give another --output")


class OutputHold:
    """What keeps other runs out of an output until release()."""

    describe = "nothing"

    def release(self) -> None: ...


class LocalLock(OutputHold):
    describe = "flock on _flowdc/lock"

    def __init__(self, dest: Destination, run_id: str):
        path = dest.path(LOCK_FILE)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_of(fd)
            os.close(fd)
            raise in_use(dest.display, holder) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd
        # Who holds it, for the message the next run prints: written over, then cut to length, so a
        # reader never finds the file empty in between.
        me = Holder.me(run_id, 0.0).to_bytes()
        os.pwrite(fd, me, 0)
        os.ftruncate(fd, len(me))

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing the last descriptor drops the lock


def _holder_of(fd: int, wait_s: float = 2.0) -> Holder | None:
    """The lock holder's own account; it writes it just after taking the lock, so wait briefly."""
    deadline = time.monotonic() + wait_s
    while (holder := Holder.parse(_read_fd(fd))) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return holder


def _read_fd(fd: int) -> bytes:
    try:
        return os.pread(fd, 4096, 0)
    except OSError:
        return b""


def hold_output(dest: Destination, run_id: str, ttl_s: float,
                on_lost: Callable[[str], None] | None = None) -> OutputHold:
    """Keep every other run out of `dest` (raises OutputInUseError naming the holder)."""
    if dest.local:
        return LocalLock(dest, run_id)
    from flowdc.storelease import StoreLease  # conditional writes need the store's fsspec

    return StoreLease(dest, run_id, ttl_s, on_lost)

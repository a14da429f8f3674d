"""What runs on a worker: `python -m flowdc.engines.task TASK.json` downloads one partition.

TASK.json is a download config (the partition's manifest, DEST/part-NNNNN as the output, the host
budget, ...) plus `_lock`, the path of the partition's lock file when the destination is a local
or shared folder, and `_time_limit_s`. Around the download it adds what a distributed run needs:

- one writer per partition: a rerun waits for the lock, which a process holds until it exits
  (kill -9 included), so a resubmitted task never writes beside a run that is still going;
- no orphans: when the process that owns this task dies (the Work Queue or TaskVine worker that
  started it, or the local engine's manager, which names itself in FLOWDC_MANAGER), the task
  stops itself (SIGTERM: the download stops cleanly and keeps what it stored). A killed worker's
  task has already been resubmitted elsewhere; a killed manager's is resumed by the next run,
  which would otherwise wait for the partition's lock;
- the wall-time limit (timeout_minutes), kept here for every engine alike: Debian's Work Queue
  (9.9) kills a task with any wall-time limit after a few seconds. Over the limit, the download
  stops cleanly and the task exits EXIT_WALL_TIME; its rerun resumes.

With cloud_tool (`_state` names the state file), the download goes to a folder in the sandbox
and ships each committed shard; the task unpacks the state an earlier run returned before it
starts, and packs the folder's rest (ledger, overview, shards not shipped) into the state file at
its end, for the engine to bring back (engines/state.py). Shards left unshipped make the exit
EXIT_LOCK_TIMEOUT, so the manager runs the task again and that run ships them.

The exit code is the download's (0 also when every row failed: the partition is complete).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from flowdc.errors import EXIT_USAGE, FlowdcError

EXIT_LOCK_TIMEOUT = 75  # EX_TEMPFAIL: the manager retries the task
EXIT_WALL_TIME = 124  # as timeout(1)
LOCK_WAIT_S = 120.0
WATCH_S = 0.5
ORPHAN_GRACE_S = 30.0  # after SIGTERM, how long a clean stop may take before a hard exit
WORKER_NAMES = ("work_queue_worker", "vine_worker")
MANAGER_ENV = "FLOWDC_MANAGER"  # set by the local engine: the manager process this task belongs to


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m flowdc.engines.task TASK.json", file=sys.stderr)
        return EXIT_USAGE
    try:
        with open(argv[0], encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        print(f"flowdc: error: cannot read the task file {argv[0]}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    lock_path = doc.pop("_lock", None)
    time_limit = float(doc.pop("_time_limit_s", 0) or 0)
    state = doc.pop("_state", None)
    owner = task_owner()
    if owner is not None:
        threading.Thread(target=_watch_owner, args=owner, name="flowdc-owner-watch", daemon=True).start()
    over_time = threading.Event()
    if time_limit > 0:
        timer = threading.Timer(time_limit, _stop_over_time, args=(over_time, time_limit))
        timer.daemon = True
        timer.start()
    config = os.path.abspath(".flowdc-task-config.json")
    with open(config, "w", encoding="utf-8") as fh:
        json.dump(doc, fh)
    if state:
        return _staged(config, doc, state, over_time)
    with partition_lock(lock_path) as held:
        if not held:
            print(f"flowdc: the partition is still locked by another run ({lock_path}); try again later",
                  file=sys.stderr)
            return EXIT_LOCK_TIMEOUT
        code = _download(config)
    return EXIT_WALL_TIME if over_time.is_set() else code


def _download(config: str) -> int:
    from flowdc.cli import main as cli_main

    return cli_main(["download", "--config", config])


def _staged(config: str, doc: dict[str, Any], state: str, over_time: threading.Event) -> int:
    """A download staged in the sandbox (cloud_tool): resume from the returned state, return it again."""
    from flowdc.engines.state import STATE_FILE, pack_state, unpack_state, unshipped_shards
    from flowdc.uploaders import CommandUploader, UploadError, spec_of

    folder = os.path.abspath(str(doc["output"]))
    unpack_state(state, folder)
    try:
        code = _download(config)
    finally:
        pack_state(folder, state)
    try:  # the ledger and overview go with the shards too, as the one state file
        CommandUploader(spec_of(doc)).upload(state, STATE_FILE)
    except (UploadError, FlowdcError) as exc:
        print(f"flowdc: {exc}", file=sys.stderr)
        code = code or EXIT_LOCK_TIMEOUT
    if code == 0 and unshipped_shards(folder):
        print("flowdc: some shards were not shipped; they come back with the state and the next run ships them",
              file=sys.stderr)
        return EXIT_LOCK_TIMEOUT
    return EXIT_WALL_TIME if over_time.is_set() else code



@contextlib.contextmanager
def partition_lock(path: str | None, wait_s: float = LOCK_WAIT_S) -> Iterator[bool]:
    """An exclusive flock on `path` (None: no lock, e.g. an object-store destination)."""
    if not path:
        yield True
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.2)
        yield True
    finally:
        os.close(fd)  # releases the lock


def worker_ancestor(pid: int | None = None) -> int | None:
    """The nearest ancestor that is a Work Queue or TaskVine worker, read from /proc (Linux)."""
    pid = os.getppid() if pid is None else pid
    for _ in range(16):
        if pid <= 1:
            return None
        try:
            with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            return None
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        if name in WORKER_NAMES or any(n.startswith(name) for n in WORKER_NAMES if len(name) >= 15):
            return pid  # comm is cut to 15 characters
        pid = int(stat[stat.rindex(")") + 2:].split()[1])
    return None


def owner_stamp() -> str:
    """This process as a task's owner, for MANAGER_ENV: PID:START (start in clock ticks since boot)."""
    return f"{os.getpid()}:{_start_ticks(os.getpid())}"


def task_owner() -> tuple[int, int, str] | None:
    """(pid, start time, what) of the process whose death ends this task: the local engine's
    manager (its stamp, taken before the task started, so a manager already gone is seen), or
    the worker this task runs under; None when there is neither."""
    pid, _, start = os.environ.get(MANAGER_ENV, "").partition(":")
    if pid.isdigit() and start.isdigit():
        return int(pid), int(start), "the distribute manager"
    worker = worker_ancestor()
    ticks = _start_ticks(worker) if worker is not None else None
    return None if worker is None or ticks is None else (worker, ticks, "the worker")


def _watch_owner(pid: int, start: int, what: str) -> None:
    # The start time tells the owner from a new process that got its pid after it died.
    while _start_ticks(pid) == start:
        time.sleep(WATCH_S)
    print(f"flowdc: {what} (process {pid}) is gone; stopping this task (a rerun resumes it)", file=sys.stderr)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(ORPHAN_GRACE_S)
    os._exit(EXIT_LOCK_TIMEOUT)


def _stop_over_time(flag: threading.Event, limit_s: float) -> None:
    flag.set()
    print(f"flowdc: the task ran past its wall-time limit ({limit_s:.0f} s); stopping (its rerun resumes)",
          file=sys.stderr)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(ORPHAN_GRACE_S)
    os._exit(EXIT_WALL_TIME)


def _start_ticks(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot), or None when it is gone or a zombie (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])  # a zombie owner is a dead one


if __name__ == "__main__":
    from flowdc.lean import hold_back_pandas

    hold_back_pandas()  # this process runs one download and exits
    sys.exit(main(sys.argv[1:]))

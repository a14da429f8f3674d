"""The embedded engine: each task is a child process on this machine, N at a time.

One event loop saturates one core, so this is also how one machine uses all of its cores. A task
process that dies from a signal (kill -9, the OOM killer) is reported like a lost worker.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass

from flowdc.engines.base import OUTPUT_TAIL_CHARS, TaskOutcome, TaskSpec, tail
from flowdc.engines.task import MANAGER_ENV, owner_stamp

POLL_S = 0.05
STOP_GRACE_S = 5.0


@dataclass
class _Running:
    spec: TaskSpec
    proc: subprocess.Popen[bytes]
    sandbox: str


class LocalEngine:
    name = "local"

    def __init__(self, workers: int = 0, staging: str | None = None) -> None:
        self.slots = workers or os.cpu_count() or 1
        self._staging = staging
        self._root = ""
        self._queue: collections.deque[TaskSpec] = collections.deque()
        self._running: list[_Running] = []
        self._seq = 0

    def start(self) -> None:
        self._root = tempfile.mkdtemp(prefix="flowdc-local-", dir=self._staging)

    @property
    def address(self) -> str:
        return f"{self.slots} local worker process{'es' if self.slots != 1 else ''}"

    def submit(self, spec: TaskSpec) -> None:
        self._queue.append(spec)
        self._dispatch()

    def workers(self) -> int:
        return self.slots

    def running(self) -> int:
        return len(self._running)

    def pids(self) -> dict[str, int]:
        """Task name -> pid of its process (tests kill these to play a lost worker)."""
        return {r.spec.name: r.proc.pid for r in self._running}

    def wait(self, timeout_s: float) -> TaskOutcome | None:
        deadline = time.monotonic() + timeout_s
        while True:
            self._dispatch()
            for run in list(self._running):
                outcome = self._check(run)
                if outcome is not None:
                    outcome.output = _log_tail(os.path.join(run.sandbox, "task.log"))
                    if outcome.ran:
                        _bring_back(run)
                    self._running.remove(run)
                    shutil.rmtree(run.sandbox, ignore_errors=True)
                    self._dispatch()
                    return outcome
            if time.monotonic() >= deadline:
                return None
            time.sleep(POLL_S)

    def _check(self, run: _Running) -> TaskOutcome | None:
        code = run.proc.poll()
        if code is None:
            return None
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
            return TaskOutcome(run.spec.name, ran=False, detail=f"task process killed by {name}", worker="local")
        return TaskOutcome(run.spec.name, ran=True, exit_code=code, worker="local")

    def _dispatch(self) -> None:
        while self._queue and len(self._running) < self.slots:
            spec = self._queue.popleft()
            self._seq += 1
            sandbox = os.path.join(self._root, f"{spec.name}-{self._seq}")
            os.makedirs(sandbox)
            for remote, local in spec.inputs.items():
                os.symlink(os.path.abspath(local), os.path.join(sandbox, remote))
            log = open(os.path.join(sandbox, "task.log"), "wb")  # noqa: SIM115 (the child owns it)
            with log:
                # A session of its own: a Ctrl-C meant for the manager does not hit the tasks twice.
                # The task watches this process: killed, it leaves no task running (engines/task.py).
                env = {**os.environ, **spec.env, MANAGER_ENV: owner_stamp()}
                proc = subprocess.Popen(spec.argv, cwd=sandbox, env=env, stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            self._running.append(_Running(spec, proc, sandbox))

    def close(self) -> None:
        self._queue.clear()
        for run in self._running:
            _stop(run.proc)
        self._running.clear()
        if self._root:
            shutil.rmtree(self._root, ignore_errors=True)


def _bring_back(run: _Running) -> None:
    """The task's output files, to the manager's paths (as a cctools worker returns them)."""
    for remote, local in run.spec.outputs.items():
        src = os.path.join(run.sandbox, remote)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.abspath(local)), exist_ok=True)
            shutil.copyfile(src, local + ".part")
            os.replace(local + ".part", local)  # never a half-copied file under the final name


def _log_tail(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(path) - OUTPUT_TAIL_CHARS * 4))
            return tail(fh.read())
    except OSError:
        return ""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the download stops cleanly and keeps what it stored), then SIGKILL after a grace."""
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(STOP_GRACE_S)

"""A Work Queue or TaskVine manager in a child process of its own, behind the Engine interface.

Why: both bindings hold the GIL for the whole of `wait()` (and Work Queue's wait(0) still blocks
about a second while tasks run), which would freeze every other thread of the manager's process:
the telemetry collector, a Prefect flow or a UI embedding `run_distribute`. In a child process the
blocking wait harms no one. The two sides speak JSON lines: the parent sends {"submit": spec} and
{"close": true} on stdin; the child answers {"started": address} or {"error": message} once, then
{"outcome": ...} per finished task and {"stats": {...}} about once a second. A parent that goes
away closes stdin, and the child stops.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import queue
import subprocess
import sys
import threading
import time
from typing import IO, Any

from flowdc.engines.base import TaskOutcome, TaskSpec
from flowdc.errors import ConfigError, FlowdcError

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
STATS_EVERY_S = 1.0


class EngineProcess:
    def __init__(self, name: str, port: int, run_dir: str) -> None:
        self.name = name
        self.port = port
        self.run_dir = run_dir
        self._address = ""
        self._workers = 0
        self._running = 0
        self._proc: subprocess.Popen[str] | None = None
        self._inbox: queue.Queue[dict[str, Any] | None] = queue.Queue()

    def start(self) -> None:
        self._proc = subprocess.Popen([sys.executable, "-m", "flowdc.engines.process", self.name, str(self.port),
                                       self.run_dir], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                      bufsize=1)
        threading.Thread(target=self._read, args=(self._proc.stdout,), name="flowdc-engine-reader",
                         daemon=True).start()
        msg = self._next(START_TIMEOUT_S)
        if msg is None or "started" not in msg:
            self.close()
            error = (msg or {}).get("error") or f"the {self.name} manager process did not start"
            raise ConfigError(error)
        self._address = msg["started"]
        self.port = int(self._address.rpartition(":")[2])

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with contextlib.suppress(json.JSONDecodeError):
                self._inbox.put(json.loads(line))
        self._inbox.put(None)  # the child is gone

    def _next(self, timeout_s: float) -> dict[str, Any] | None:
        try:
            return self._inbox.get(timeout=max(0.0, timeout_s))
        except queue.Empty:
            return {}

    def _send(self, msg: dict[str, Any]) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(msg) + "\n")
        self._proc.stdin.flush()

    @property
    def address(self) -> str:
        return self._address

    def submit(self, spec: TaskSpec) -> None:
        self._send({"submit": dataclasses.asdict(spec)})

    def wait(self, timeout_s: float) -> TaskOutcome | None:
        deadline = time.monotonic() + timeout_s
        while True:
            msg = self._next(deadline - time.monotonic())
            if msg is None:
                raise FlowdcError(f"the {self.name} manager process ended unexpectedly")
            if "stats" in msg:
                self._workers, self._running = msg["stats"]["workers"], msg["stats"]["running"]
            elif "outcome" in msg:
                return TaskOutcome(**msg["outcome"])
            if time.monotonic() >= deadline:
                return None

    def workers(self) -> int:
        return self._workers

    def running(self) -> int:
        return self._running

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            assert proc.stdin is not None
            proc.stdin.write(json.dumps({"close": True}) + "\n")
            proc.stdin.close()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)


# -- the child ------------------------------------------------------------------------------------
def _emit(msg: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def _commands(inbox: queue.Queue[dict[str, Any] | None]) -> None:
    for line in sys.stdin:
        with contextlib.suppress(json.JSONDecodeError):
            inbox.put(json.loads(line))
    inbox.put(None)  # stdin closed: the parent is done or gone


def serve(name: str, port: int, run_dir: str) -> int:
    from flowdc.engines.cctools import CctoolsEngine

    engine: CctoolsEngine
    try:
        if name == "workqueue":
            from flowdc.engines.workqueue import WorkQueueEngine

            engine = WorkQueueEngine(port, run_dir)
        else:
            from flowdc.engines.taskvine import TaskVineEngine

            engine = TaskVineEngine(port, run_dir)
        engine.start()
    except FlowdcError as exc:
        _emit({"error": str(exc)})
        return exc.exit_code
    _emit({"started": engine.address})
    inbox: queue.Queue[dict[str, Any] | None] = queue.Queue()
    threading.Thread(target=_commands, args=(inbox,), daemon=True).start()
    last_stats = 0.0
    try:
        while True:
            while not inbox.empty():
                msg = inbox.get()
                if msg is None or msg.get("close"):
                    return 0
                if "submit" in msg:
                    engine.submit(TaskSpec(**msg["submit"]))
            outcome = engine.wait(1.0)
            if outcome is not None:
                _emit({"outcome": dataclasses.asdict(outcome)})
            if time.monotonic() - last_stats >= STATS_EVERY_S:
                last_stats = time.monotonic()
                _emit({"stats": {"workers": engine.workers(), "running": engine.running()}})
    finally:
        engine.close()


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1], int(sys.argv[2]), sys.argv[3]))

"""What Work Queue and TaskVine share: a manager on a port, command tasks with input files,
resources and an environment, and `wait(seconds)`. The two APIs differ mostly in names
(specify_cores vs set_cores, ...), so each subclass gives its names and the few calls that differ
in shape; everything else is this one code path.

Workers find the manager by HOST PORT only: a project name is never set, since that would make
the manager report to a catalog server on the internet.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import shlex
import socket
from typing import Any, ClassVar

from flowdc.engines.base import TaskOutcome, TaskSpec, tail
from flowdc.errors import ConfigError


def import_binding(module: str, engine: str, how_to_install: str) -> Any:
    """The engine's Python module, imported only when that engine is asked for."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"the {engine} engine needs {module} ({exc}); {how_to_install}") from None


class CctoolsEngine:
    name: ClassVar[str]
    # Task method names in this API for: cores, memory (MB), disk (MB), wall time (s), retries, env var.
    setters: ClassVar[dict[str, str]]

    def __init__(self, port: int = 0, run_dir: str = "") -> None:
        self.port = port
        self.run_dir = run_dir  # where the manager may keep its logs
        self.manager: Any = None
        self._tasks: dict[int, tuple[TaskSpec, Any]] = {}  # the task objects must outlive wait()

    # -- the parts each API spells its own way ---------------------------------------------------
    def _new_manager(self, port: int) -> Any:
        raise NotImplementedError

    def _new_task(self, command: str) -> Any:
        raise NotImplementedError

    def _add_input(self, task: Any, local: str, remote: str) -> None:
        raise NotImplementedError

    def _add_output(self, task: Any, local: str, remote: str) -> None:
        raise NotImplementedError

    def _outcome(self, task: Any) -> tuple[bool, int | None, str]:
        """(ran to its end, exit code, why not)."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------
    def start(self) -> None:
        self.manager = self._new_manager(self.port)
        self.port = int(self.manager.port)

    @property
    def address(self) -> str:
        return f"{socket.gethostname()}:{self.port}"

    def submit(self, spec: TaskSpec) -> None:
        # The command's stderr joins its stdout, which the engine brings back to the manager.
        task = self._new_task(shlex.join(spec.argv) + " 2>&1")
        for remote, local in spec.inputs.items():
            self._add_input(task, local, remote)
        for remote, local in spec.outputs.items():
            self._add_output(task, local, remote)
        for key, value in spec.env.items():
            self._set(task, "env", key, value)
        self._set(task, "cores", spec.cores)
        if spec.memory_mb:
            self._set(task, "memory", spec.memory_mb)
        if spec.disk_mb:
            self._set(task, "disk", spec.disk_mb)
        if spec.worker_retries:
            self._set(task, "retries", spec.worker_retries)
        task_id = self.manager.submit(task)
        self._tasks[int(task_id)] = (spec, task)

    def _set(self, task: Any, what: str, *args: Any) -> None:
        getattr(task, self.setters[what])(*args)

    def wait(self, timeout_s: float) -> TaskOutcome | None:
        # Blocks holding the GIL (both bindings): run it in a process of its own (engines/process.py).
        task = self.manager.wait(max(1, math.ceil(timeout_s)))  # whole seconds in both APIs
        if task is None:
            return None
        spec, _ = self._tasks.pop(int(task.id))
        ran, code, detail = self._outcome(task)
        return TaskOutcome(spec.name, ran=ran, exit_code=code, detail=detail, worker=str(task.hostname or ""),
                           output=tail(task.output), resubmitted=resubmissions(task))

    def workers(self) -> int:
        return int(self.manager.stats.workers_connected)

    def running(self) -> int:
        return int(self.manager.stats.tasks_running)

    def close(self) -> None:
        # Workers are the user's: they stay up (and leave by their own --timeout). Dropping the
        # manager closes its port.
        self._tasks.clear()
        self.manager = None


def resubmissions(task: Any) -> int:
    """Runs of `task` lost with their worker that the manager submitted again by itself (it hands
    back only the last): its try count, as the binding names it (Work Queue 9.9 keeps `try_count` on
    the C task; others say `total_submissions`)."""
    for owner in (task, getattr(task, "_task", None)):
        for name in ("try_count", "total_submissions"):
            with contextlib.suppress(Exception):
                tries = getattr(owner, name)
                if isinstance(tries, int) and tries > 0:
                    return tries - 1
    return 0

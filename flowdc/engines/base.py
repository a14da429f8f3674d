"""The one small interface every engine implements: submit tasks, wait for outcomes, count workers.

A task is a command plus the files it needs in its sandbox; engines know nothing about downloads.
What to do with an outcome (done, retry, give up) is decided once, in distribute.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class TaskSpec:
    """One partition's task. `argv` refers to inputs by their sandbox names (keys of `inputs`)."""

    name: str  # part-NNNNN
    argv: list[str]
    inputs: dict[str, str] = field(default_factory=dict)  # sandbox name -> local path on the manager
    # sandbox name -> local path on the manager: brought back when the command ran to its end
    # (whatever its exit code); a run lost with its worker brings nothing back.
    outputs: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    cores: int = 1
    memory_mb: int = 0  # 0 = the engine's default
    disk_mb: int = 0
    worker_retries: int = 0  # engine-side resubmissions after worker failures (0 = engine default)


@dataclass
class TaskOutcome:
    """How one run of a task ended.

    ran: the command ran to its end on a worker and `exit_code` is its status. When it did not
    (a lost worker, a signal, the wall-time limit, a missing input), `detail` says why.
    """

    name: str
    ran: bool
    exit_code: int | None = None
    detail: str = ""
    worker: str = ""
    output: str = ""  # the tail of the task's stdout and stderr
    resubmitted: int = 0  # earlier runs the engine lost with their worker and resubmitted by itself


OUTPUT_TAIL_CHARS = 2000


def tail(text: str | bytes | None) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return (text or "")[-OUTPUT_TAIL_CHARS:]


class Engine(Protocol):
    name: str

    def start(self) -> None:
        """Open the manager (bind the port); after this, `address` is final."""

    @property
    def address(self) -> str:
        """Where workers connect (HOST:PORT), or a description for the local engine."""

    def submit(self, spec: TaskSpec) -> None: ...

    def wait(self, timeout_s: float) -> TaskOutcome | None:
        """The next finished task, or None when none finished within timeout_s."""

    def workers(self) -> int:
        """Workers connected now."""

    def running(self) -> int:
        """Tasks running on a worker now."""

    def close(self) -> None:
        """Stop what this engine started; never blocks without a deadline."""

"""Total timeouts for many requests at once: one loop timer, for the earliest deadline.

aiohttp's own total timeout arms a loop timer for every request and cancels it when the request
ends: in a webdataset run of thumbnails that was 28k of the 790k instructions a request costs the
event loop (3.5%), for timers that almost never fire. Here a request enters its deadline in a dict,
and one timer is armed for the earliest deadline. When it fires, every request past its deadline
is cancelled, as aiohttp's timer would have cancelled it, and the timer is armed again for the
earliest deadline left; a request that ended meanwhile just leaves the dict. The request's own
code turns that cancellation back into a timeout (`Deadline.absorbs`).
"""

from __future__ import annotations

import asyncio
import math
import weakref


class Deadline:
    """One request's deadline, entered by `Deadlines.start` and left by `Deadlines.end`."""

    __slots__ = ("due", "expired", "task")

    def __init__(self, task: asyncio.Task[object], due: float):
        self.task = task
        self.due = due
        self.expired = False  # the deadline passed and its task was cancelled for it

    def absorbs(self) -> bool:
        """For a CancelledError raised in the request: True when the deadline's own cancellation
        caused it (the cancellation is taken back: the request timed out, the task goes on);
        False when something else cancelled the task too, and the error must go on up."""
        return self.expired and self.task.uncancel() == 0


class Deadlines:
    """The deadlines of the requests running on one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        # Weakly: _BY_LOOP's value must not keep its key alive (each asyncio.run makes a new loop).
        self._loop = weakref.ref(loop)
        self._open: dict[Deadline, None] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def start(self, seconds: float) -> Deadline:
        """The running task's request must end within `seconds`."""
        loop = self._running_loop()
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("a deadline needs a running task to cancel")
        deadline = Deadline(task, loop.time() + seconds)
        self._open[deadline] = None
        if deadline.due < self._timer_at:
            self._arm(deadline.due)
        return deadline

    def end(self, deadline: Deadline) -> None:
        """The request ended. The timer stays armed while others run (when it fires it finds the
        next deadline); with none left it goes, and with it the last reference to the loop."""
        self._open.pop(deadline, None)
        if not self._open and self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, math.inf

    def __len__(self) -> int:
        return len(self._open)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop()
        if loop is None:
            raise RuntimeError("the event loop of these deadlines is gone")
        return loop

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._running_loop().call_at(at, self._expire)
        self._timer_at = at

    def _expire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        now = self._running_loop().time()
        earliest = math.inf
        for deadline in [*self._open]:
            if deadline.due <= now:
                del self._open[deadline]
                deadline.expired = True
                deadline.task.cancel()
            else:
                earliest = min(earliest, deadline.due)
        if self._open:
            self._arm(earliest)


_BY_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Deadlines] = weakref.WeakKeyDictionary()


def deadlines() -> Deadlines:
    """The running loop's deadlines."""
    loop = asyncio.get_running_loop()
    found = _BY_LOOP.get(loop)
    if found is None:
        found = _BY_LOOP[loop] = Deadlines(loop)
    return found

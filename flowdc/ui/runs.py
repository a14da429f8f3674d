"""Start and stop the runs the page launches, and feed their telemetry into a LiveState.

A local run is a child process (`python -m flowdc download|distribute --config TASK.json`): the page stays
responsive, Stop is the same SIGINT a person's Ctrl-C is (what is stored stays stored, a rerun
resumes), and the child writes its telemetry as JSON lines that a tailer thread reads into the
live view. No NiceGUI here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flowdc.ui.live import LiveState

TAIL_S = 0.25  # how often the tailer looks for new telemetry lines
KEEP_TELEMETRY = 20  # a workdir keeps the telemetry of this many latest runs (for `flowdc report`)
STOP_GRACE_S = 15.0  # after SIGINT, how long a run may take to close its shards before SIGTERM


class JsonlTail:
    """Follows a JSONL file that another process appends to; feeds whole lines only."""

    def __init__(self, path: Path, state: LiveState):
        self.path = path
        self.state = state
        try:  # a file that already holds earlier runs' lines: follow only what this run appends
            self._pos = path.stat().st_size
        except OSError:
            self._pos = 0
        self._partial = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="flowdc-ui-tail", daemon=True)

    def start(self) -> JsonlTail:
        self._thread.start()
        return self

    def read_new(self) -> int:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._pos)
                chunk = fh.read()
        except FileNotFoundError:
            return 0
        self._pos += len(chunk)
        data = self._partial + chunk
        whole, _, self._partial = data.rpartition(b"\n")
        return self.state.ingest_lines(whole) if whole else 0

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.read_new()  # the last lines the run wrote before it ended

    def _loop(self) -> None:
        while not self._stop.wait(TAIL_S):
            self.read_new()


@dataclasses.dataclass
class RunStatus:
    kind: str = ""  # download | distribute | prefect
    state: str = "idle"  # idle | running | stopping | finished | stopped | failed
    detail: str = ""
    started: float | None = None


class LocalRun:
    """One child process running a flowdc command, with its telemetry followed into `state`."""

    def __init__(self, kind: str, argv: Sequence[str], state: LiveState, telemetry: Path | None,
                 overview: Path | None = None, env: dict[str, str] | None = None,
                 on_end: Callable[[RunStatus], None] | None = None, task: Path | None = None):
        self.status = RunStatus(kind=kind, state="running", started=time.time())
        self.state = state
        self._overview = overview
        self._on_end = on_end
        self._task = task  # the child's config: it may hold secrets, and is removed when the child ends
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115  (read when the child ends)
        self.proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self._stderr, env={**os.environ, **(env or {})},
                                     start_new_session=True)  # a Ctrl-C on the UI's terminal is not the run's
        self._tail = JsonlTail(telemetry, state).start() if telemetry else None
        self._waiter = threading.Thread(target=self._wait, name="flowdc-ui-run", daemon=True)
        self._waiter.start()

    def stop(self) -> None:
        """Ctrl-C for the run: it keeps what it stored; after a grace period, SIGTERM."""
        if self.proc.poll() is not None:
            return
        self.status.state = "stopping"
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGINT)
        threading.Timer(STOP_GRACE_S, self._terminate).start()

    def wait(self, timeout: float | None = None) -> RunStatus:
        self._waiter.join(timeout)
        return self.status

    @property
    def running(self) -> bool:
        return self._waiter.is_alive()

    def _terminate(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()

    def _wait(self) -> None:
        code = self.proc.wait()
        if self._task is not None:
            self._task.unlink(missing_ok=True)
        if self._tail is not None:
            self._tail.stop()
        # overview.json is this run's only when it ended by itself or by Ctrl-C
        self.state.finish(read_overview(self._overview) if code in (0, 130) else None)
        self._stderr.seek(0)
        lines = [ln for ln in self._stderr.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        self._stderr.close()
        last = lines[-1][:300] if lines else ""
        stopping = self.status.state == "stopping"
        if code == 0:
            self.status.state, self.status.detail = "finished", "exit 0"
        elif stopping or code in (130, -signal.SIGINT, -signal.SIGTERM):
            self.status.state, self.status.detail = "stopped", "stopped; start again to resume"
        else:
            self.status.state, self.status.detail = "failed", f"exit {code}: {last}"
        if self._on_end is not None:
            self._on_end(self.status)


def read_overview(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_private_json(folder: Path, name: str, data: dict[str, Any]) -> Path:
    """A task config for a child process: it may hold storage secrets, so only we may read it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    return path


def start_run(kind: str, cfg: Any, state: LiveState, workdir: Path, *, env: dict[str, str] | None = None,
              on_end: Callable[[RunStatus], None] | None = None) -> LocalRun:
    """`flowdc download` or `flowdc distribute` of a checked config in a child process, watched live.

    A download writes its own telemetry file; a distribute run's manager merges every partition's
    pushes into one file (its collector), which the page follows the same way. The files a run
    gets in `workdir` are named for it alone: pages that share a workdir do not share files.
    """
    data = {k: v for k, v in dataclasses.asdict(cfg).items() if v is not None}  # None = the default
    local_output = "://" not in cfg.output or cfg.output.startswith("file://")
    output = Path(cfg.output.removeprefix("file://"))
    overview: Path | None = None
    run_name = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{next(_RUNS_STARTED)}"
    if kind == "download":
        keep_latest(workdir, "telemetry-*.jsonl", KEEP_TELEMETRY - 1)
        telemetry: Path | None = Path(data.get("telemetry") or workdir / f"telemetry-{run_name}.jsonl")
        data["telemetry"] = str(telemetry)
        overview = output / "overview.json" if local_output else None
        state.reset(rows_total=manifest_rows(cfg))
    else:
        from flowdc.distribute import TELEMETRY_FILE  # the manager's collector writes it

        telemetry = output / TELEMETRY_FILE if local_output else None  # a remote run's file is the manager's
        state.reset()
    data["quiet"] = True
    task = write_private_json(workdir, f"{kind}-task-{run_name}.json", data)
    argv = [sys.executable, "-m", "flowdc", kind, "--config", str(task)]
    return LocalRun(kind, argv, state, telemetry, overview, env=env, on_end=on_end, task=task)


_RUNS_STARTED = itertools.count(1)  # in this process: two runs started within a second get two names


def keep_latest(folder: Path, pattern: str, keep: int) -> None:
    """Remove all but the `keep` newest files in `folder` that match `pattern`."""
    found = []
    for path in folder.glob(pattern):
        with contextlib.suppress(OSError):  # another page's cleanup may take it first
            found.append((path.stat().st_mtime, path))
    for _, path in sorted(found, reverse=True)[max(keep, 0):]:
        path.unlink(missing_ok=True)


def manifest_rows(cfg: Any) -> int | None:
    """The manifest's row count when it is cheap to know (for the ETA); None otherwise."""
    try:
        from flowdc.manifest import Manifest

        return Manifest(cfg.input, cfg.url, cfg.input_format, cfg.batch_rows).num_rows_hint()
    except Exception:  # the run itself reports a bad manifest, with the CLI's message
        return None

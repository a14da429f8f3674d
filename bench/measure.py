"""Run one benchmark contender as a subprocess: wall time, peak RSS of its process tree, a timeout.

Shared by bench/run.py and the contenders that live in their own modules (img2dataset_contender).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_S = 0.1  # RSS sampling period


@dataclass
class Measured:
    returncode: int | None  # None: killed at the timeout
    wall_s: float
    peak_rss_mb: float
    stdout: str
    stderr: str
    started_at: float = 0.0  # epoch seconds at the start: the contender's own records are timed by the wall clock


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def _kill_tree(proc: psutil.Process) -> None:
    """Stop the contender we started and whatever it started, by pid."""
    with contextlib.suppress(psutil.Error):
        procs = [*proc.children(recursive=True), proc]
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.terminate()
        _, alive = psutil.wait_procs(procs, timeout=5)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()


def measure(cmd: list[str], timeout_s: float, log_dir: Path, source: Path = ROOT,
            env: Mapping[str, str] | None = None) -> Measured:
    """Run cmd with `source` (a checkout) first on the path, so its flowdc is the one imported.

    `env`, when given, is the whole environment instead (a contender with its own venv must not
    see our PYTHONPATH).
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_dir / "stdout.txt", log_dir / "stderr.txt"
    if env is None:
        pythonpath = os.pathsep.join(filter(None, [str(source), os.environ.get("PYTHONPATH")]))
        env = dict(os.environ, PYTHONPATH=pythonpath)
    peak = 0
    with out_path.open("wb") as out, err_path.open("wb") as err:
        started_at, start = time.time(), time.monotonic()
        popen = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=dict(env), cwd=source)
        proc = psutil.Process(popen.pid)
        returncode: int | None = None
        while True:
            with contextlib.suppress(psutil.Error):
                peak = max(peak, _tree_rss(proc))
            try:
                returncode = popen.wait(SAMPLE_S)
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() - start > timeout_s:
                    _kill_tree(proc)
                    popen.wait(10)
                    break
        wall = time.monotonic() - start
    return Measured(
        returncode,
        wall,
        peak / 2**20,
        out_path.read_text(errors="replace"),
        err_path.read_text(errors="replace"),
        started_at,
    )


def tail(text: str, lines: int = 3) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])[:300]

"""Engines run one task per partition: `local` processes (the default), Work Queue or TaskVine workers."""

from __future__ import annotations

from typing import Any

from flowdc.engines.base import Engine, TaskOutcome, TaskSpec

__all__ = ["Engine", "TaskOutcome", "TaskSpec", "make_engine"]


def make_engine(cfg: Any, run_dir: str) -> Engine:
    """The engine a DistributeConfig names. A Work Queue or TaskVine manager runs in a child process
    (engines/process.py), which imports the cctools bindings only when asked for."""
    if cfg.engine in ("workqueue", "taskvine"):
        from flowdc.engines.process import EngineProcess

        return EngineProcess(cfg.engine, cfg.port_number, run_dir)
    from flowdc.engines.local import LocalEngine

    return LocalEngine(cfg.workers, run_dir)

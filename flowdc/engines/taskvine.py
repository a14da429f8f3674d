"""TaskVine (ndcctools.taskvine, from cctools 7.x): workers join with `vine_worker HOST PORT`.

Imported lazily: it is on conda-forge (or built from source), not on every machine.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from flowdc.engines.cctools import CctoolsEngine, import_binding
from flowdc.errors import ConfigError


class TaskVineEngine(CctoolsEngine):
    name = "taskvine"
    setters: ClassVar[dict[str, str]] = {
        "cores": "set_cores", "memory": "set_memory", "disk": "set_disk",
        "retries": "set_retries", "env": "set_env_var"}

    def __init__(self, port: int = 0, run_dir: str = "") -> None:
        super().__init__(port, run_dir)
        self.vine = import_binding("ndcctools.taskvine", self.name, "install cctools (conda-forge ndcctools, or "
                                   "a source build on PYTHONPATH); see docs/distributed.md")

    def _new_manager(self, port: int) -> Any:
        # The manager writes its logs under run_info_path (default: ./vine-run-info): keep them with the run.
        info = os.path.join(self.run_dir, "vine-run-info") if self.run_dir else "vine-run-info"
        try:
            return self.vine.Manager(port=port, run_info_path=info)
        except Exception as exc:
            raise ConfigError(f"cannot start the TaskVine manager on port {port}: {exc}") from None

    def _new_task(self, command: str) -> Any:
        return self.vine.Task(command)

    def _add_input(self, task: Any, local: str, remote: str) -> None:
        task.add_input(self.manager.declare_file(local, cache=False, peer_transfer=False), remote)

    def _add_output(self, task: Any, local: str, remote: str) -> None:
        task.add_output(self.manager.declare_file(local, cache=False), remote)

    def _outcome(self, task: Any) -> tuple[bool, int | None, str]:
        if task.result == "success":
            return True, int(task.exit_code), ""
        return False, None, str(task.result)
